"""The single-edit benchmark on a tiny random Llama: one CSV row per call, step size honoured."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from script_helpers import run_script

from hiedit.config import job_config, load_config, resolve_setup
from hiedit.data import QA, EditRecord, write_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_single_edit_benchmark_writes_one_row_per_run(tmp_path):
    config = load_config(ROOT / "config.yaml")
    job = job_config(
        config, resolve_setup(config, "smoke"), "tiny-llama", "geofacts-zsre", "hiedit-untrained", 0
    )
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))
    records = [
        EditRecord(
            f"r{i}",
            f"City{i}",
            "P17",
            "zsre",
            QA(f"Which country is City{i} in?", f"Land{i}"),
            QA(f"City{i} lies in which country?", f"Land{i}"),
            QA(f"What is the capital of State{i}?", f"Town{i}"),
        )
        for i in range(3)
    ]
    write_split(records, tmp_path / "eval.parquet")
    out = tmp_path / "single.csv"
    for lr in ("0", "1.0"):
        run_script(
            "benchmarks/single_edit.py",
            "--run-config",
            str(job_path),
            "--eval-data",
            str(tmp_path / "eval.parquet"),
            "--lr",
            lr,
            "--records",
            "3",
            "--threads",
            "1",
            "--out",
            str(out),
        )
    rows = list(csv.DictReader(out.open()))
    assert [float(r["lr"]) for r in rows] == [0.0, 1.0]
    assert all(r["records"] == "3" and r["variant"] == "hiedit-untrained" for r in rows)
    zero, large = (float(r["single_edit_efficacy"]) for r in rows)
    # A zero step leaves the random model at its own (near-zero) accuracy on made-up targets;
    # a large gradient step on one fact must raise it.
    assert large > zero + 0.5, (zero, large)
