"""Result files: all-or-nothing writes, the tidy table's validation and the gather command, run info."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hiedit.cli import main
from hiedit.evaluation.outputs import (
    LONG_COLUMNS,
    METRICS_FILE,
    RESULT_FILES,
    ResultFileError,
    clear_results,
    gather,
    long_rows,
    write_evaluation,
)
from hiedit.evaluation.runinfo import collect_runinfo

IDENTITY = {"model": "tiny-llama", "dataset": "geofacts-zsre", "variant": "hiedit", "seed": 0}


def _long(metrics=None, n_edits=12, **identity) -> pd.DataFrame:
    return pd.DataFrame(
        long_rows(
            {**IDENTITY, **identity}, n_edits, metrics or {"efficacy": 0.5, "specificity": 1.0}
        )
    )


def _write(out_dir, runinfo=None):
    return write_evaluation(
        out_dir,
        summary={**IDENTITY, "n_edits": 12, "efficacy": 0.5},
        long=_long(),
        per_edit=pd.DataFrame({"index": [0, 1], "efficacy": [0.0, 1.0]}),
        curve=pd.DataFrame({"n_edits": [6, 12], "efficacy": [0.25, 0.5]}),
        runinfo=runinfo if runinfo is not None else {"seeds": {"seed": 0}},
    )


def test_all_files_written(tmp_path):
    written = _write(tmp_path / "new" / "dir")
    assert [p.name for p in written] == list(RESULT_FILES)
    assert written[-1].name == METRICS_FILE
    assert json.loads(written[-1].read_text())["efficacy"] == 0.5
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == sorted(RESULT_FILES)
    assert (written[0].stat().st_mode & 0o044) == 0o044  # readable like a normally opened file


def test_a_failing_write_leaves_no_result_file(tmp_path):
    # runinfo is written after the CSVs and before metrics.json: a value JSON cannot encode.
    with pytest.raises(TypeError):
        _write(tmp_path, runinfo={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_nan_metric_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ResultFileError, match="column 'value'"):
        write_evaluation(
            tmp_path,
            summary={},
            long=_long({"efficacy": float("nan")}),
            per_edit=pd.DataFrame(),
            curve=pd.DataFrame(),
            runinfo={},
        )
    assert list(tmp_path.iterdir()) == []


def test_clear_results_removes_old_outputs_only(tmp_path):
    _write(tmp_path)
    (tmp_path / "notes.txt").write_text("keep")
    clear_results(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_gather_concatenates_and_types(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _long().to_csv(a, index=False)
    _long(variant="rledit").to_csv(b, index=False)
    table = gather([a, b])
    assert list(table.columns) == list(LONG_COLUMNS)
    assert len(table) == 4
    assert table["seed"].dtype == "int64" and table["value"].dtype == "float64"
    assert table["variant"].tolist() == ["hiedit", "hiedit", "rledit", "rledit"]
    assert list(gather([]).columns) == list(LONG_COLUMNS)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns="seed"), "missing seed"),
        (lambda f: f.assign(extra=1), "unexpected extra"),
        (lambda f: f.assign(value=[0.5, 1.5]), "in \\[0, 1\\]"),
        (lambda f: f.assign(value=["x", 0.1]), "column 'value'"),
        (lambda f: f.assign(n_edits=[1.5, 2]), "non-negative integer"),
        (lambda f: f.assign(metric=[None, "x"]), "column 'metric' is empty"),
        (lambda f: f.assign(metric=["efficacy", "efficacy"]), "duplicate"),
    ],
)
def test_gather_names_the_bad_file(tmp_path, mutate, message):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    _long().to_csv(good, index=False)
    mutate(_long()).to_csv(bad, index=False)
    with pytest.raises(ResultFileError, match=message) as err:
        gather([good, bad])
    assert "bad.csv" in str(err.value)


def test_gather_refuses_a_key_seen_in_another_file(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _long().to_csv(a, index=False)
    _long().to_csv(b, index=False)
    with pytest.raises(ResultFileError, match="already in .*a.csv"):
        gather([a, b])


def test_gather_cli(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _long().to_csv(a, index=False)
    _long(seed=1).to_csv(b, index=False)
    out = tmp_path / "tables" / "metrics.csv"
    assert main(["evaluate", "gather", "--out", str(out), str(a), str(b)]) == 0
    assert pd.read_csv(out)["seed"].tolist() == [0, 0, 1, 1]
    assert main(["evaluate", "gather", "--out", str(out), str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err


def test_runinfo_names_versions_device_and_seeds():
    info = collect_runinfo(seeds={"seed": 3}, device="cpu", extra={"n_edits": 5})
    assert set(info["versions"]) >= {"torch", "transformers", "triton", "hiedit"}
    assert info["versions"]["torch"] and info["versions"]["hiedit"]
    assert info["device"]["type"] == "cpu" and info["device"]["name"]
    assert info["seeds"] == {"seed": 3} and info["n_edits"] == 5
    assert info["python"].count(".") == 2
