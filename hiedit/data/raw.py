"""Reading raw dataset files and checking their fields, with errors that name file, record and field."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hiedit.errors import DataError

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_json_list(path: str | os.PathLike[str]) -> list[Any]:
    """The records of a JSON file holding a list (``.jsonl``: one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            if path.suffix == ".jsonl":
                data = [json.loads(line) for line in fh if line.strip()]
            else:
                data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path.name}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise DataError(f"{path.name}: expected a JSON list of records, got {type(data).__name__}")
    return data


class RecordFields:
    """Typed access to one raw record's fields; every failure names file, record index and field."""

    def __init__(self, file: str, index: int, record: Any):
        self.file = file
        self.index = index
        if not isinstance(record, dict):
            raise self.error(None, f"is a {type(record).__name__}, expected an object")
        self.record = record

    def error(self, field: str | None, problem: str) -> DataError:
        where = f"{self.file}: record {self.index}"
        return DataError(f"{where}: field '{field}' {problem}" if field else f"{where}: {problem}")

    def has(self, path: str) -> bool:
        try:
            self._lookup(path)
        except DataError:
            return False
        return True

    def _lookup(self, path: str) -> Any:
        node: Any = self.record
        walked = []
        for key in path.split("."):
            walked.append(key)
            if not isinstance(node, dict):
                raise self.error(".".join(walked[:-1]), "is not an object")
            if key not in node:
                raise self.error(".".join(walked), "is missing")
            node = node[key]
        return node

    def value(self, path: str) -> Any:
        """The raw value at a dotted path (e.g. ``requested_rewrite.target_new.str``)."""
        return self._lookup(path)

    def text(self, path: str, *, allow_empty: bool = False) -> str:
        """A string field; empty (or all-whitespace) strings are rejected unless allowed."""
        value = self._lookup(path)
        return self._check_text(path, value, allow_empty)

    def _check_text(self, path: str, value: Any, allow_empty: bool) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"is a {type(value).__name__}, expected a string")
        if not allow_empty and not value.strip():
            raise self.error(path, "is empty")
        return value

    def texts(self, path: str) -> list[str]:
        """A non-empty list of non-empty strings (a bare string counts as a one-item list)."""
        value = self._lookup(path)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self.error(path, f"is a {type(value).__name__}, expected a list of strings")
        if not items:
            raise self.error(path, "is an empty list")
        return [self._check_text(f"{path}[{i}]", item, False) for i, item in enumerate(items)]

    def first(self, *paths: str) -> str:
        """The name of the first of ``paths`` present (for fields with alternative names)."""
        for path in paths:
            if self.has(path):
                return path
        raise self.error(
            paths[0], "is missing" + (f" (also tried {', '.join(paths[1:])})" if paths[1:] else "")
        )


def parse_records(
    file: str,
    raw: Sequence[Any],
    parse_one: Callable[[RecordFields], T],
    *,
    drop_malformed: bool = False,
) -> Iterator[T]:
    """Apply ``parse_one`` to every raw record; malformed ones raise, or with ``drop_malformed`` are
    dropped with a warning naming each (never silently)."""
    dropped = 0
    for index, record in enumerate(raw):
        try:
            yield parse_one(RecordFields(file, index, record))
        except DataError as err:
            if not drop_malformed:
                raise
            dropped += 1
            log.warning("dropped malformed record: %s", err)
    if dropped:
        log.warning("%s: dropped %d of %d records as malformed", file, dropped, len(raw))
