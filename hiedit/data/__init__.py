"""Edit datasets: readers for ZsRE/CounterFact, the embedded geofacts, tokenisation and the split store."""

from hiedit.data.geofacts import build_geofacts, write_geofacts
from hiedit.data.loading import load_records
from hiedit.data.records import QA, EditRecord
from hiedit.data.store import read_split, write_split
from hiedit.data.tokenize import (
    IGNORE_INDEX,
    Batch,
    answer_positions,
    check_fits_model,
    check_token_lengths,
    encode_qa,
    encode_qa_pair,
    encode_role,
)

__all__ = [
    "IGNORE_INDEX",
    "QA",
    "Batch",
    "EditRecord",
    "answer_positions",
    "build_geofacts",
    "check_fits_model",
    "check_token_lengths",
    "encode_qa",
    "encode_qa_pair",
    "encode_role",
    "load_records",
    "read_split",
    "write_geofacts",
    "write_split",
]
