"""Smoke test of the editor-speed benchmark: the packed and padded steps, their FLOPs, the CSV."""

from __future__ import annotations

import csv

import pytest
from editor_helpers import toy_records
from script_helpers import run_script

from hiedit.data import write_split


def test_benchmark_times_the_packed_and_the_padded_step_on_the_tiny_model(tmp_path):
    train = write_split(toy_records(12), tmp_path / "train.parquet")
    eval_data = write_split(toy_records(6), tmp_path / "eval.parquet")
    out = tmp_path / "editor_speed.csv"
    run_script(
        "benchmarks/editor_speed.py",
        "--setup",
        "smoke",
        "--model",
        "tiny-llama",
        "--train-data",
        str(train),
        "--eval-data",
        str(eval_data),
        "--train-steps",
        "2",
        "--edits",
        "2",
        "--back-depth",
        "3",
        "--pack-tokens",
        "80",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    rows = {r["metric"]: r for r in csv.DictReader(out.open())}
    assert int(rows["train_step_seconds"]["n"]) == 4  # two timed steps per arm, twice
    assert int(rows["train_step_seconds_padded"]["n"]) == 4
    assert all(r["pack_tokens"] == "80" for r in rows.values())
    # Packing removes the padding's products: fewer FLOPs for the same step.
    packed, padded = (
        float(rows[m]["median"]) for m in ("train_step_gflop", "train_step_gflop_padded")
    )
    assert 0 < packed < padded
    seconds, padded_seconds = (
        float(rows[m]["median"]) for m in ("train_step_seconds", "train_step_seconds_padded")
    )
    ratio = float(rows["train_step_packed_over_padded"]["median"])
    assert ratio == pytest.approx(seconds / padded_seconds, rel=0.05)  # the CSV rounds to 4 digits
    assert float(rows["gemm_gflop_per_second"]["median"]) > 0
    assert float(rows["peak_rss_mib"]["median"]) > 0
