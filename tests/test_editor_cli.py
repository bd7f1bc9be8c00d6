"""The ``train`` command: checkpoint, loss log and run info from a job configuration."""

from __future__ import annotations

import csv
import json

import torch
from editor_helpers import tiny_job, toy_records

from hiedit.cli import main
from hiedit.data import write_split


def test_train_command_writes_checkpoint_log_and_runinfo(tmp_path):
    job = tiny_job(training={"n_trajectories": 2, "trajectory_length": 3})
    config = tmp_path / "job.json"
    config.write_text(json.dumps(job))
    train = write_split(toy_records(8), tmp_path / "train.parquet")
    out = tmp_path / "editor" / "editor.pt"
    curve = tmp_path / "editor" / "train_log.csv"
    argv = ["train", "--run-config", str(config), "--train-data", str(train), "--out", str(out)]
    assert main([*argv, "--log-curve", str(curve), "--no-progress", "--threads", "1"]) == 0
    state = torch.load(out, weights_only=False)
    assert state["complete"] and state["identity"]["trained_variant"] == "hiedit"
    with open(curve) as handle:
        assert len(list(csv.DictReader(handle))) == 6
    info = json.loads((out.parent / "editor.pt.runinfo.json").read_text())
    assert info["steps"] == 6 and info["versions"]["torch"]
    # Resuming a finished run does no further training and keeps the log.
    assert main([*argv, "--log-curve", str(curve), "--no-progress", "--resume"]) == 0
    with open(curve) as handle:
        assert len(list(csv.DictReader(handle))) == 6


def test_train_command_reports_a_bad_config(tmp_path, capsys):
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"variant": "hiedit"}))
    train = write_split(toy_records(2), tmp_path / "train.parquet")
    code = main(["train", "--run-config", str(config), "--train-data", str(train), "--out", "x.pt"])
    assert code == 2 and "missing key 'model'" in capsys.readouterr().err
