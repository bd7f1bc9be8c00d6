"""Smoke test of the AlphaEdit solve benchmark: both forms agree, the CSV has its columns."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_compares_both_solves_on_small_shapes(tmp_path):
    out = tmp_path / "solve.csv"
    run = subprocess.run(
        [
            sys.executable,
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
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.open()))
    assert [int(r["null_dim"]) for r in rows] == [24, 86]
    for row in rows:
        assert row["torch"] == torch.__version__ and row["threads"] == "1"
        assert float(row["dense_median_s"]) > 0 and float(row["null_space_median_s"]) > 0
        assert float(row["max_rel_diff"]) < 1e-10
