"""Reading raw dataset files and checking their fields, with errors that name file, record and field.

Every malformed record gets one of a small fixed set of reasons (``REASONS``), so that a check can
report and count all of them and a preparation can drop them by policy (``ON_MALFORMED``) with
the counts written down, rather than stopping at the first bad record of a public file.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from hiedit.errors import DataError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Why a record is malformed; each RecordError carries exactly one.
MISSING = "missing"  # a required field is absent
WRONG_TYPE = "wrong_type"  # a field (or the record itself) has the wrong JSON type
EMPTY = "empty"  # an empty or all-whitespace string
EMPTY_LIST = "empty_list"  # a list that must hold at least one item is empty
TOO_LONG = "too_long"  # a string longer than the character limit
DUPLICATE_ID = "duplicate_id"  # the record's id repeats an earlier record's
INVALID = "invalid"  # right type, unusable value (no '{}' slot, item counts that do not match)
REASONS = (MISSING, WRONG_TYPE, EMPTY, EMPTY_LIST, TOO_LONG, DUPLICATE_ID, INVALID)

# What to do with malformed records when preparing splits.
ON_MALFORMED = ("fail", "drop")

# Far above any real ZsRE or CounterFact field (their longest prompts are a few hundred
# characters), far below what would make tokenisation and scoring exhaust memory.
DEFAULT_MAX_CHARS = 2000


class RecordError(DataError):
    """One malformed record: ``file``, ``index``, ``field`` (None: the record as a whole) and
    ``reason`` (one of ``REASONS``); the message names all of them but the reason code."""

    def __init__(self, file: str, index: int, field: str | None, reason: str, problem: str):
        if reason not in REASONS:
            raise ValueError(f"unknown malformed-record reason {reason!r}")
        where = f"{file}: record {index}"
        super().__init__(f"{where}: field '{field}' {problem}" if field else f"{where}: {problem}")
        self.file = file
        self.index = index
        self.field = field
        self.reason = reason


def load_json_list(path: str | os.PathLike[str]) -> list[Any]:
    """The records of a JSON file holding a list (``.jsonl``: one JSON object per line).

    A UTF-8 byte-order mark at the start is accepted (some editors and exporters write one).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(
            f"{path.name}: the file is empty (0 bytes), expected a JSON list of records"
        )
    try:
        with open(path, encoding="utf-8-sig") as fh:
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
    """Typed access to one raw record's fields; every failure names file, record index and field.

    Strings longer than ``max_chars`` (None: no limit) are rejected as ``too_long``.
    """

    def __init__(
        self, file: str, index: int, record: Any, *, max_chars: int | None = DEFAULT_MAX_CHARS
    ):
        self.file = file
        self.index = index
        self.max_chars = max_chars
        if not isinstance(record, dict):
            raise self.error(None, f"is a {type(record).__name__}, expected an object", WRONG_TYPE)
        self.record = record

    def error(self, field: str | None, problem: str, reason: str) -> RecordError:
        return RecordError(self.file, self.index, field, reason, problem)

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
                raise self.error(".".join(walked[:-1]), "is not an object", WRONG_TYPE)
            if key not in node:
                raise self.error(".".join(walked), "is missing", MISSING)
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
            raise self.error(path, f"is a {type(value).__name__}, expected a string", WRONG_TYPE)
        if not allow_empty and not value.strip():
            raise self.error(path, "is empty", EMPTY)
        if self.max_chars is not None and len(value) > self.max_chars:
            raise self.error(
                path,
                f"is {len(value):,} characters long, over the limit of {self.max_chars:,}",
                TOO_LONG,
            )
        return value

    def texts(self, path: str) -> list[str]:
        """A non-empty list of non-empty strings (a bare string counts as a one-item list)."""
        value = self._lookup(path)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self.error(
                path, f"is a {type(value).__name__}, expected a list of strings", WRONG_TYPE
            )
        if not items:
            raise self.error(path, "is an empty list", EMPTY_LIST)
        return [self._check_text(f"{path}[{i}]", item, False) for i, item in enumerate(items)]

    def first(self, *paths: str) -> str:
        """The name of the first of ``paths`` present (for fields with alternative names)."""
        for path in paths:
            if self.has(path):
                return path
        also = f" (also tried {', '.join(paths[1:])})" if paths[1:] else ""
        raise self.error(paths[0], "is missing" + also, MISSING)


def base_field(field: str | None) -> str:
    """The field a reason is counted under: list items count as their list (``a[3]`` -> ``a``)."""
    if field is None:
        return "(record)"
    return field.split("[", 1)[0]


@dataclass
class Parsed(Generic[T]):
    """Everything read from one file: the valid records in file order and every malformed one."""

    file: str
    read: int  # records in the file, valid or not
    records: list[T] = field(default_factory=list)
    malformed: list[RecordError] = field(default_factory=list)

    def per_reason(self) -> dict[str, int]:
        """Malformed records per reason, every reason listed (zeros included), in ``REASONS`` order."""
        counts = Counter(err.reason for err in self.malformed)
        return {reason: counts[reason] for reason in REASONS}

    def per_field(self) -> dict[str, dict[str, int]]:
        """Malformed records per field and reason (only those that occur)."""
        out: dict[str, dict[str, int]] = {}
        for err in self.malformed:
            by_reason = out.setdefault(base_field(err.field), {})
            by_reason[err.reason] = by_reason.get(err.reason, 0) + 1
        return {name: dict(sorted(by_reason.items())) for name, by_reason in sorted(out.items())}

    def summary(self) -> str:
        """E.g. ``"empty 2, missing 1"`` (reasons that occur), or ``"none"``."""
        counts = [f"{r} {n}" for r, n in self.per_reason().items() if n]
        return ", ".join(counts) if counts else "none"


def parse_records(
    file: str,
    raw: Sequence[Any],
    parse_one: Callable[[RecordFields], T],
    *,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> Parsed[T]:
    """Apply ``parse_one`` to every raw record, collecting the malformed ones instead of stopping."""
    parsed: Parsed[T] = Parsed(file=file, read=len(raw))
    for index, record in enumerate(raw):
        try:
            parsed.records.append(parse_one(RecordFields(file, index, record, max_chars=max_chars)))
        except RecordError as err:
            parsed.malformed.append(err)
    return parsed


def apply_policy(parsed: Parsed[T], on_malformed: str) -> list[T]:
    """The valid records of ``parsed`` under ``on_malformed``.

    ``fail``: the first malformed record raises (its message, plus how many more there are).
    ``drop``: each malformed record is logged as a warning, then a per-reason summary (never
    silently). Either way a file with no records, or none left, is an error naming the file.
    """
    if on_malformed not in ON_MALFORMED:
        raise DataError(
            f"unknown on_malformed policy {on_malformed!r}; expected one of {ON_MALFORMED}"
        )
    if parsed.read == 0:
        raise DataError(f"{parsed.file}: holds no records (an empty list)")
    bad = parsed.malformed
    if bad and on_malformed == "fail":
        more = (
            f" (and {len(bad) - 1} more malformed records; `hiedit data check` lists them all)"
            if len(bad) > 1
            else ""
        )
        raise DataError(f"{bad[0]}{more}") from bad[0]
    for err in bad:
        log.warning("dropped malformed record: %s", err)
    if bad:
        log.warning(
            "%s: dropped %d of %d records as malformed (%s)",
            parsed.file,
            len(bad),
            parsed.read,
            parsed.summary(),
        )
    if not parsed.records:
        raise DataError(
            f"{parsed.file}: no valid records left: all {parsed.read} are malformed "
            f"({parsed.summary()})"
        )
    return parsed.records
