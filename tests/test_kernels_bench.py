"""Smoke tests for the commit benchmarks: small shapes, CSV columns, plot, GPU refusal."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_cpu_benchmark_small_writes_csv_and_plot(tmp_path):
    out = tmp_path / "commit_cpu.csv"
    run = _run(
        "benchmarks/commit_cpu.py",
        "--small",
        "--repeats",
        "1",
        "--L",
        "4",
        "--K",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.open()))
    assert {r["path"] for r in rows} == {"dense", "fused", "fused_master", "copy"}
    assert {r["dtype"] for r in rows} == {"bf16", "fp32"}
    for r in rows:
        assert r["device"] and r["torch"] == torch.__version__
        assert (r["L"], r["K"], r["n"]) == ("4", "2", "16")
        assert float(r["median_s"]) >= float(r["min_s"]) > 0
        assert int(r["bytes"]) > 0 and float(r["GBps"]) > 0
    fused = next(r for r in rows if r["path"] == "fused" and r["dtype"] == "bf16")
    dense = next(r for r in rows if r["path"] == "dense" and r["dtype"] == "bf16")
    # The bytes model: the dense path moves 24 bytes per element of all L modules.
    assert int(dense["bytes"]) > 10 * int(fused["bytes"]) // 2

    png = tmp_path / "commit.png"
    run = _run("benchmarks/plot_commit.py", str(out), "--out", str(png))
    assert run.returncode == 0, run.stderr
    assert png.stat().st_size > 10_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_benchmark_refuses_without_cuda():
    run = _run("benchmarks/commit_gpu.py", "--K", "1", "--n", "1")
    assert run.returncode == 2
    assert "needs a CUDA GPU" in run.stderr
