"""The Parquet split store: round trip, atomic write and validation errors naming file/column."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiedit.data import QA, EditRecord, read_split, write_split
from hiedit.data.store import COLUMNS
from hiedit.errors import DataError

RECORDS = [
    EditRecord(
        "zsre:0",
        "France",
        "P36",
        "zsre",
        QA("What is the capital of France?", "Lyon"),
        QA("Which city is the capital of France?", "Lyon"),
        QA("nq question: who wrote hamlet?", "Shakespeare"),
    ),
    EditRecord(
        "counterfact:7",
        "Norway",
        "P36",
        "counterfact",
        QA("The capital of Norway is", "Rome", "Oslo"),
        QA("Norway's capital city is", "Rome", "Oslo"),
        QA("The capital of Italy is", "Rome", "Oslo"),
    ),
]


def test_round_trip(tmp_path):
    path = write_split(RECORDS, tmp_path / "sub" / "eval.parquet")
    assert read_split(path) == RECORDS
    assert pq.read_table(path).column_names == list(COLUMNS)
    assert [p.name for p in path.parent.iterdir()] == ["eval.parquet"]  # no temp file left


def test_empty_split_is_an_error_naming_the_file(tmp_path):
    path = write_split([], tmp_path / "zsre" / "eval.parquet")
    with pytest.raises(DataError, match=r"zsre/eval\.parquet: the split holds no records"):
        read_split(path)
    assert read_split(path, allow_empty=True) == []


def test_failed_write_leaves_existing_file(tmp_path):
    path = write_split(RECORDS, tmp_path / "s.parquet")
    with pytest.raises(AttributeError):
        write_split([object()], path)
    assert read_split(path) == RECORDS
    assert [p.name for p in tmp_path.iterdir()] == ["s.parquet"]


def test_missing_column_names_file_and_column(tmp_path):
    path = write_split(RECORDS, tmp_path / "s.parquet")
    pq.write_table(pq.read_table(path).drop(["unrel_target"]), path)
    with pytest.raises(DataError, match=r"s\.parquet: missing column\(s\) unrel_target"):
        read_split(path)


def test_null_required_value_names_row_and_column(tmp_path):
    path = write_split(RECORDS, tmp_path / "s.parquet")
    table = pq.read_table(path)
    i = table.column_names.index("equiv_prompt")
    table = table.set_column(i, "equiv_prompt", pa.array(["x", None], pa.string()))
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"s\.parquet: row 1: column 'equiv_prompt' is null"):
        read_split(path)


def test_not_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_text("hello")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        read_split(path)
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "missing.parquet")
