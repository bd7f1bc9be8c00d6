"""``hiedit evaluate`` end to end: tiny random Llama, the real (untrained) editor, result files, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hiedit.cli import main
from hiedit.config import job_config as make_job_config
from hiedit.config import load_config, resolve_setup
from hiedit.data import QA, EditRecord, write_split
from hiedit.evaluation.outputs import LONG_COLUMNS, RESULT_FILES

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
N_EDITS = 6


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    config = load_config(CONFIG)
    resolved = resolve_setup(config, "smoke")
    job = make_job_config(config, resolved, "tiny-llama", "geofacts-zsre", "hiedit", 0)
    job["evaluation"].update(n_edits=N_EDITS, num_pre=2, n_curve_points=2, curve_sample=3)
    path = tmp_path_factory.mktemp("job") / "job.json"
    path.write_text(json.dumps(job))
    return path


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    records = [
        EditRecord(
            f"r{i}",
            f"City{i}",
            "P17",
            "zsre",
            QA(f"Which country is City{i} in?", f"Land{i % 4}"),
            QA(f"City{i} lies in which country?", f"Land{i % 4}"),
            QA(f"nq question: what is the capital of State{i}?", f"Town{i % 3}"),
        )
        for i in range(N_EDITS + 2)
    ]
    path = tmp_path_factory.mktemp("data") / "eval.parquet"
    write_split(records, path)
    return path


def _evaluate(job, eval_data, out_dir, *extra) -> int:
    return main(
        [
            "evaluate",
            "--run-config",
            str(job),
            "--eval-data",
            str(eval_data),
            "--untrained",
            "--out-dir",
            str(out_dir),
            "--no-progress",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def finished(job, eval_data, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("eval") / "tiny-llama" / "geofacts-zsre" / "hiedit" / "seed0"
    assert _evaluate(job, eval_data, out_dir) == 0
    return out_dir


def test_result_files(finished):
    assert sorted(p.name for p in finished.iterdir()) == sorted(RESULT_FILES)
    summary = json.loads((finished / "metrics.json").read_text())
    assert {k: summary[k] for k in ("model", "dataset", "variant", "seed", "n_edits")} == {
        "model": "tiny-llama",
        "dataset": "geofacts-zsre",
        "variant": "hiedit",
        "seed": 0,
        "n_edits": N_EDITS,
    }
    names = [
        "efficacy",
        "generalization",
        "specificity",
        "specificity_agreement",
        "retention_efficacy",
        "retention_generalization",
        "retention_specificity",
        "unedited_efficacy",
        "unedited_generalization",
        "unedited_specificity",
    ]
    for name in names:
        assert 0.0 <= summary[name] <= 1.0, name

    long = pd.read_csv(finished / "metrics_long.csv")
    assert list(long.columns) == list(LONG_COLUMNS)
    final = long[~long["metric"].str.startswith("curve_")]
    assert set(final["n_edits"]) == {N_EDITS}
    assert dict(zip(final["metric"], final["value"], strict=True)) == pytest.approx(
        {k: v for k, v in summary.items() if k in set(final["metric"])}
    )
    assert set(long.loc[long["metric"] == "curve_efficacy", "n_edits"]) == {3, 6}

    per_edit = pd.read_csv(finished / "per_edit.csv")
    assert per_edit["record_id"].tolist() == [f"r{i}" for i in range(N_EDITS)]
    assert (per_edit["n_selected"] == 2).all()  # tiny-llama: K = 2
    assert per_edit["selected"].str.split(";").map(len).eq(2).all()
    assert (per_edit["seconds"] > 0).all()
    phases = per_edit[[f"{p}_seconds" for p in ("capture", "route", "update", "commit")]]
    assert (phases > 0).all().all()
    assert phases.sum(axis=1).to_numpy() == pytest.approx(per_edit["seconds"].to_numpy())
    assert summary["efficacy"] == pytest.approx(per_edit["efficacy"].mean())

    curve = pd.read_csv(finished / "curve.csv")
    assert curve["n_edits"].tolist() == [3, 6] and curve["n_scored"].tolist() == [3, 3]
    info = json.loads((finished / "runinfo.json").read_text())
    assert info["seeds"]["seed"] == 0 and info["versions"]["torch"]


def test_interrupted_cli_run_resumes_to_identical_metrics(
    job, eval_data, finished, tmp_path, monkeypatch
):
    from hiedit.editor import HiEditor

    original = HiEditor.edit_records
    calls = []

    def crash_after_four(self, records):
        if len(calls) == 4:
            raise RuntimeError("simulated interruption")
        calls.append(1)
        return original(self, records)

    out_dir = tmp_path / "out"
    monkeypatch.setattr(HiEditor, "edit_records", crash_after_four)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _evaluate(job, eval_data, out_dir, "--save-every", "2")
    assert not (out_dir / "metrics.json").exists()
    assert (out_dir / "resume-state" / "progress.pt").is_file()
    monkeypatch.setattr(HiEditor, "edit_records", original)

    assert _evaluate(job, eval_data, out_dir, "--save-every", "2") == 0
    assert not (out_dir / "resume-state").exists()
    resumed = json.loads((out_dir / "metrics.json").read_text())
    reference = json.loads((finished / "metrics.json").read_text())
    assert resumed == reference
    assert json.loads((out_dir / "runinfo.json").read_text())["resumed_from"] == 4
    columns = ["selected", "efficacy", "generalization", "specificity", "specificity_agreement"]
    assert pd.read_csv(out_dir / "per_edit.csv")[columns].equals(
        pd.read_csv(finished / "per_edit.csv")[columns]
    )
    assert pd.read_csv(out_dir / "curve.csv").equals(pd.read_csv(finished / "curve.csv"))


def test_missing_arguments_are_reported(job, eval_data, tmp_path, capsys):
    assert main(["evaluate", "--run-config", str(job), "--out-dir", str(tmp_path)]) == 2
    assert "--eval-data" in capsys.readouterr().err
    args = ["--run-config", str(job), "--eval-data", str(eval_data), "--out-dir", str(tmp_path)]
    assert main(["evaluate", *args]) == 2
    assert "--checkpoint FILE or --untrained" in capsys.readouterr().err


def test_shared_unedited_scores_give_the_same_results(job, eval_data, finished, tmp_path):
    scores = tmp_path / "unedited.pt"
    args = ["--run-config", str(job), "--eval-data", str(eval_data), "--out", str(scores)]
    assert main(["evaluate", "unedited", *args]) == 0
    out_dir = tmp_path / "shared"
    assert _evaluate(job, eval_data, out_dir, "--unedited", str(scores)) == 0
    assert json.loads((out_dir / "metrics.json").read_text()) == json.loads(
        (finished / "metrics.json").read_text()
    )
    # scores of another stream are refused, naming the file
    other = tmp_path / "other.json"
    changed = json.loads(job.read_text())
    changed["evaluation"]["n_edits"] = N_EDITS - 1
    other.write_text(json.dumps(changed))
    assert _evaluate(other, eval_data, tmp_path / "x", "--unedited", str(scores)) == 2
