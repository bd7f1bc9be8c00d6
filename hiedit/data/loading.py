"""One entry point for reading a raw dataset file of either format into edit records."""

from __future__ import annotations

import os

from hiedit.data.counterfact import read_counterfact
from hiedit.data.records import FORMATS, EditRecord
from hiedit.data.zsre import read_zsre
from hiedit.errors import DataError


def load_records(
    path: str | os.PathLike[str], format: str, seed: int, *, drop_malformed: bool = False
) -> list[EditRecord]:
    """Read ``path`` as ``format`` ("zsre" or "counterfact"); ``seed`` picks CounterFact prompts.

    Malformed records raise ``DataError`` naming file, record index and field; with
    ``drop_malformed`` they are dropped instead, each with a logged warning.
    """
    if format == "zsre":
        return read_zsre(path, drop_malformed=drop_malformed)
    if format == "counterfact":
        return read_counterfact(path, seed=seed, drop_malformed=drop_malformed)
    raise DataError(f"unknown data format {format!r}; expected one of {FORMATS}")
