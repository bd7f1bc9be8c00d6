"""Smoke test of the AlphaEdit solve benchmark: both forms agree, the CSV has its columns."""

from __future__ import annotations

import csv

import torch
from script_helpers import run_script


def test_benchmark_compares_both_solves_on_small_shapes(tmp_path):
    out = tmp_path / "solve.csv"
    run_script(
        "benchmarks/alphaedit_solve.py",
        "--d-in",
        "96",
        "--null-fractions",
        "0.25,0.9",
        "--n-keys",
        "3",
        "--repeats",
        "2",
        "--out",
        str(out),
    )
    rows = list(csv.DictReader(out.open()))
    assert [int(r["null_dim"]) for r in rows] == [24, 86]
    for row in rows:
        assert row["torch"] == torch.__version__ and row["threads"] == "1"
        assert float(row["dense_median_s"]) > 0 and float(row["null_space_median_s"]) > 0
        assert float(row["max_rel_diff"]) < 1e-10
