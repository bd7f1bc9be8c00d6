"""One entry point for reading a raw dataset file of either format into edit records."""

from __future__ import annotations

import os

from hiedit.data.counterfact import parse_counterfact
from hiedit.data.raw import DEFAULT_MAX_CHARS, Parsed, apply_policy
from hiedit.data.records import FORMATS, EditRecord
from hiedit.data.zsre import parse_zsre
from hiedit.errors import DataError


def parse_file(
    path: str | os.PathLike[str],
    format: str,
    seed: int,
    *,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> Parsed[EditRecord]:
    """Read ``path`` as ``format`` ("zsre" or "counterfact"): its valid records and every
    malformed one (each a ``RecordError`` with index, field and reason). ``seed`` picks
    CounterFact prompts; strings over ``max_chars`` characters are malformed."""
    if format == "zsre":
        return parse_zsre(path, max_chars=max_chars)
    if format == "counterfact":
        return parse_counterfact(path, seed=seed, max_chars=max_chars)
    raise DataError(f"unknown data format {format!r}; expected one of {FORMATS}")


def load_records(
    path: str | os.PathLike[str],
    format: str,
    seed: int,
    *,
    on_malformed: str = "fail",
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> list[EditRecord]:
    """The valid records of ``path`` read as ``format``.

    With ``on_malformed="fail"`` the first malformed record raises ``DataError`` naming file,
    record index and field; with ``"drop"`` malformed records are dropped, each with a logged
    warning. A file with no records, or none valid, is an error either way.
    """
    return apply_policy(parse_file(path, format, seed, max_chars=max_chars), on_malformed)
