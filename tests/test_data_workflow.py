"""The workflow's data preparation: each dataset's on_malformed reaches `data prepare`, and the
paper setup gets past preparation on real-format files with the public files' defects."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import ROOT, copy_workflow, run_snakemake

pytestmark = pytest.mark.workflow

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _this_checkout_first(monkeypatch):
    """Snakemake and its rules import the `hiedit` of this checkout, whatever is installed."""
    import os

    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


def _prepare_commands(output: str) -> dict[str, str]:
    """Shell command of each prepare_data job in a dry run's output, by dataset."""
    commands = {}
    for line in output.splitlines():
        if "hiedit data prepare" in line:
            dataset = line.split("--dataset ", 1)[1].split()[0]
            commands[dataset] = line
    return commands


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("paper", {"zsre": "drop", "counterfact": "drop"}),
        ("default", {"geofacts-zsre": "fail", "geofacts-counterfact": "fail"}),
    ],
)
def test_prepare_data_passes_each_datasets_policy(tmp_path, setup, expected):
    workdir = copy_workflow(tmp_path)
    result = run_snakemake(["data", "-n", "-p", "--config", f"setup={setup}"], workdir, 300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = _prepare_commands(result.stdout)
    assert set(commands) == set(expected)
    for dataset, policy in expected.items():
        assert f"--on-malformed {policy} " in commands[dataset]
        assert f"--stats results/data/{dataset}/stats.json" in commands[dataset]


def test_max_chars_from_the_catalogue_reaches_prepare(tmp_path):
    workdir = copy_workflow(tmp_path)
    extra = workdir / "limits.yaml"
    extra.write_text(yaml.safe_dump({"datasets": {"zsre": {"max_chars": 500}}}))
    args = ["data", "-n", "-p", "--configfile", str(extra), "--config", "setup=paper"]
    result = run_snakemake(args, workdir, 300)
    assert result.returncode == 0, result.stderr[-3000:]
    commands = _prepare_commands(result.stdout)
    assert "--on-malformed drop --max-chars 500 " in commands["zsre"]
    assert "--on-malformed drop --max-chars 2000 " in commands["counterfact"]


def _paper_with_raw_fixtures(tmp_path: Path, **zsre_entry) -> tuple[Path, Path]:
    """A workflow copy whose paper downloads are already in place (real formats, with defects),
    and a config file that shortens the streams to the fixtures' size."""
    workdir = copy_workflow(tmp_path)
    raw = workdir / "resources" / "data"
    (raw / "zsre").mkdir(parents=True)
    (raw / "counterfact").mkdir(parents=True)
    shutil.copy(FIXTURES / "zsre_mend_train_defects.json", raw / "zsre" / "train.json")
    shutil.copy(FIXTURES / "zsre_mend_eval_defects.json", raw / "zsre" / "eval.json")
    shutil.copy(FIXTURES / "counterfact_rome_defects.json", raw / "counterfact" / "all.json")
    extra = workdir / "short.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "setups": {"paper": {"overrides": {"evaluation": {"n_edits": 3}}}},
                "datasets": {"zsre": zsre_entry} if zsre_entry else {},
            }
        )
    )
    return workdir, extra


@pytest.mark.slow
def test_paper_setup_gets_past_data_preparation_on_defective_files(tmp_path):
    workdir, extra = _paper_with_raw_fixtures(tmp_path)
    target = "results/report/data/preparation.csv"
    args = [target, "--cores", "1", "--configfile", str(extra), "--config", "setup=paper"]
    result = run_snakemake(args, workdir, 600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stats = json.loads((workdir / "results/data/zsre/stats.json").read_text())
    assert stats["on_malformed"] == "drop" and stats["dataset"] == "zsre"
    assert stats["inputs"]["train"]["dropped_per_field"] == {
        "alt": {"empty": 1},
        "answers": {"empty_list": 1},
        "loc_ans": {"missing": 1},
    }
    assert stats["splits"]["eval"]["records"] == 3
    log = (workdir / "results/logs/prepare_data/zsre.log").read_text()
    assert "train.json: record 1: field 'alt' is empty" in log
    assert "eval.json: record 2: field 'alt' is empty" in log
    table = pd.read_csv(workdir / target)
    assert list(table["dataset"]) == ["zsre", "counterfact"]
    assert list(table["dropped"]) == [4, 2]
    assert list(table["dropped_empty_list"]) == [1, 2]
    # The report item: category Data, its caption valid reStructuredText naming the policies.
    report = workdir / "report.zip"
    result = run_snakemake([*args, "--report", str(report)], workdir, 600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
        page = archive.read(next(m for m in names if m.endswith("report.html"))).decode()
    assert {"preparation.csv", "preparation.html"} <= {Path(m).name for m in names}
    assert "System Message" not in page
    assert 'zsre: <tt class=\\"docutils literal\\">drop</tt>; counterfact: <tt' in page


@pytest.mark.slow
def test_on_malformed_fail_stops_the_workflow_naming_the_record(tmp_path):
    workdir, extra = _paper_with_raw_fixtures(tmp_path, on_malformed="fail")
    target = "results/data/zsre/stats.json"
    args = [target, "--cores", "1", "--configfile", str(extra), "--config", "setup=paper"]
    result = run_snakemake(args, workdir, 600)
    assert result.returncode != 0
    log = (workdir / "results/logs/prepare_data/zsre.log").read_text()
    assert "error: train.json: record 1: field 'alt' is empty" in log
    # Nothing a rerun could take for a finished preparation.
    assert not list((workdir / "results" / "data").glob("zsre/*"))
