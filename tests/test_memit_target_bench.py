"""Smoke test of the MEMIT target benchmark: both paths agree, the CSV has its rows."""

from __future__ import annotations

import csv

from editor_helpers import toy_records
from script_helpers import run_script

from hiedit.data import write_split


def test_benchmark_times_both_target_paths_on_the_tiny_model(tmp_path):
    eval_data = write_split(toy_records(4), tmp_path / "eval.parquet")
    out = tmp_path / "memit_target.csv"
    run_script(
        "benchmarks/memit_target.py",
        "--setup",
        "smoke",
        "--model",
        "tiny-llama",
        "--eval-data",
        str(eval_data),
        "--n-records",
        "2",
        "--out",
        str(out),
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["kind"] for r in rows] == ["record", "record", "median"]
    for row in rows:
        assert float(row["whole_s"]) > 0 and float(row["cached_s"]) > 0
        assert float(row["max_rel_diff"]) < 1e-5
        assert row["model"] == "tiny-llama" and row["n_layers"] == "4"
    assert all(int(r["steps"]) > 0 for r in rows[:2])
