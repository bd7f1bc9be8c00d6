"""The tidy on-disk form of a split: one Parquet file, one row per edit record, one column per field."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from hiedit.atomic import write_with
from hiedit.data.records import FORMATS, QA, ROLES, EditRecord
from hiedit.errors import DataError

ID_COLUMNS = ("record_id", "subject", "relation", "format")
ROLE_FIELDS = ("prompt", "target", "old")
COLUMNS = ID_COLUMNS + tuple(f"{role}_{field}" for role in ROLES for field in ROLE_FIELDS)


def _schema():
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in COLUMNS])


def records_to_columns(records: Iterable[EditRecord]) -> dict[str, list[str | None]]:
    """Column-wise dict (keys ``COLUMNS``) of ``records``; ``*_old`` is None for ZsRE."""
    columns: dict[str, list[str | None]] = {name: [] for name in COLUMNS}
    for rec in records:
        for name in ID_COLUMNS:
            columns[name].append(getattr(rec, name))
        for role in ROLES:
            qa = rec.role(role)
            for field in ROLE_FIELDS:
                columns[f"{role}_{field}"].append(getattr(qa, field))
    return columns


def write_split_to(records: Sequence[EditRecord], path: str | os.PathLike[str]) -> None:
    """Write ``records`` as Parquet to ``path`` directly (callers arrange atomicity)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict(records_to_columns(records), schema=_schema())
    pq.write_table(table, path)


def write_split(records: Sequence[EditRecord], path: str | os.PathLike[str]) -> Path:
    """Write ``records`` to a Parquet file at ``path`` atomically (temp file + rename)."""
    return write_with(path, lambda tmp: write_split_to(records, tmp))


def read_split(path: str | os.PathLike[str], *, allow_empty: bool = False) -> list[EditRecord]:
    """Read a split written by ``write_split``; columns and values are validated.

    Raises ``DataError`` naming the file (and the column and row where relevant); a split with
    no records is one too unless ``allow_empty`` (training and evaluation need records).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise DataError(f"{name}: not a readable Parquet file ({err})") from err
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)}")
    if table.num_rows == 0 and not allow_empty:
        raise DataError(f"{path}: the split holds no records (prepare it from a non-empty file)")
    data = {c: table.column(c).to_pylist() for c in COLUMNS}
    records = []
    for row in range(table.num_rows):
        values = {c: data[c][row] for c in COLUMNS}
        for column, value in values.items():
            required = not column.endswith("_old")
            if value is None and required:
                raise DataError(f"{name}: row {row}: column '{column}' is null")
            if value is not None and not isinstance(value, str):
                raise DataError(f"{name}: row {row}: column '{column}' is not a string")
        if values["format"] not in FORMATS:
            raise DataError(
                f"{name}: row {row}: column 'format' is {values['format']!r}, expected one of {FORMATS}"
            )
        for role in ROLES:
            if values[f"{role}_target"] == "":
                raise DataError(f"{name}: row {row}: column '{role}_target' is empty")
        qas = {
            role: QA(values[f"{role}_prompt"], values[f"{role}_target"], values[f"{role}_old"])
            for role in ROLES
        }
        records.append(EditRecord(**{c: values[c] for c in ID_COLUMNS}, **qas))
    return records
