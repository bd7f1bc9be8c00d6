"""The flat-long-stream benchmark script runs the real stream and summarises it per window."""

from __future__ import annotations

import csv

from editor_helpers import toy_records
from script_helpers import run_script

from hiedit.data import write_split


def test_long_stream_benchmark_writes_windows_and_a_summary(tmp_path):
    eval_data = write_split(toy_records(8), tmp_path / "eval.parquet")
    out = tmp_path / "bench.csv"
    run_script(
        "benchmarks/long_stream.py",
        "--setup",
        "smoke",
        "--model",
        "tiny-llama",
        "--eval-data",
        str(eval_data),
        "--n-edits",
        "6",
        "--window",
        "2",
        "--lr",
        "1e-3",
        "--probe-every",
        "3",
        "--per-edit",
        str(tmp_path / "per_edit.csv"),
        "--out",
        str(out),
        "--plot",
        str(tmp_path / "bench.png"),
        "--probe-plot",
        str(tmp_path / "probe.png"),
    )
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    windows = [r for r in rows if r["kind"] == "window"]
    (summary,) = [r for r in rows if r["kind"] == "summary"]
    assert [int(w["first_edit"]) for w in windows] == [0, 2, 4]
    assert float(summary["last_over_first"]) > 0 and float(summary["rss_last_mib"]) > 0
    assert float(summary["final_scoring_tuples_per_s"]) > 0
    # the host probe ran after edits 3 and 6 (windows 1 and 2; window 0 has none) and every
    # timed phase of the edit has its own window median and ratio
    assert windows[0]["probe_seconds"] == "nan"
    assert all(float(w["probe_seconds"]) > 0 for w in windows[1:])
    for column in ("capture", "route", "update", "commit"):
        assert float(windows[0][f"median_{column}_seconds"]) > 0
        assert float(summary[f"median_{column}_seconds_last_over_first"]) > 0
    assert float(summary["probe_seconds_last_over_first"]) > 0
    assert float(summary["edit_over_probe_last_over_first"]) > 0
    with open(tmp_path / "per_edit.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 6
    # the report's long-stream panels of the same windows, as a PNG
    for figure in ("bench.png", "probe.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_edits_only_runs_the_edit_loop_without_scoring(tmp_path):
    eval_data = write_split(toy_records(4), tmp_path / "eval.parquet")
    out = tmp_path / "bench.csv"
    run = run_script(
        "benchmarks/long_stream.py",
        "--setup",
        "smoke",
        "--model",
        "tiny-llama",
        "--eval-data",
        str(eval_data),
        "--n-edits",
        "4",
        "--window",
        "2",
        "--probe-every",
        "1",
        "--edits-only",
        "--per-edit",
        str(tmp_path / "per_edit.csv"),
        "--out",
        str(out),
    )
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    (summary,) = [r for r in rows if r["kind"] == "summary"]
    assert summary["edits_only"] == "True" and summary["final_scoring_tuples_per_s"] == "nan"
    assert float(summary["edit_over_probe_last_over_first"]) > 0
    with open(tmp_path / "per_edit.csv") as handle:
        per_edit = list(csv.DictReader(handle))
    # the edit log of the stream, without any score column
    assert [int(r["index"]) for r in per_edit] == [0, 1, 2, 3]
    assert {"wall_seconds", "rss_mib", "capture_seconds", "commit_seconds"} <= set(per_edit[0])
    assert not {"efficacy", "specificity", "unedited_efficacy"} & set(per_edit[0])
    assert "scoring unedited" not in run.stderr
