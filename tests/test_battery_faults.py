"""Reliability battery, hard kills and determinism on the smoke setup, through Snakemake.

A ``train_editor`` job and an ``evaluate`` job are killed mid-run (SIGKILL to Snakemake's whole
process group, as a power loss or ``kill -9`` would); the README's recovery (``--unlock``, then
the same command) resumes them, and the final ``results/tables/metrics.csv`` is byte-identical to
that of an uninterrupted run, as is that of a second clean run.

The runs are restricted to one dataset and one variant of the smoke setup and ask for the metrics
table only. Training is lengthened (20 trajectories, a resumable checkpoint after each, a short
validation every 5) and the stream too (150 edits), so that a kill right after the first resumable
state still lands seconds before the job's end however loaded the machine is.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from workflow_helpers import copy_workflow

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

TARGET = "results/tables/metrics.csv"
# The README's command on the smoke setup, asking for the metrics table only.
COMMAND = [TARGET, "--cores", "all", "--config", "setup=smoke"]
RUN = "tiny-llama/geofacts-zsre/hiedit/seed0"
EDITOR = f"results/editors/{RUN}/editor.pt"
EVAL_DIR = f"results/eval/{RUN}"
TIMEOUT = 900


def environment() -> dict[str, str]:
    """This interpreter's environment first on PATH (the rules call ``python -m hiedit``)."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}


def workflow_copy(dest: Path) -> Path:
    """The workflow with a smoke setup small enough to run four times and long enough to kill."""
    dest.mkdir(parents=True)
    copy_workflow(dest)
    path = dest / "config.yaml"
    config = yaml.safe_load(path.read_text())
    smoke = config["setups"]["smoke"]
    smoke.update(
        datasets=["geofacts-zsre"],
        variants=["hiedit"],
        k_sweep=[],
        job_threads=1,
        geofacts_eval=150,
    )
    # Validation on (its state resumes too), short, and no early stop: a predictable length.
    smoke["overrides"]["training"].update(
        n_trajectories=20, checkpoint_every=1, validation_edits=20, validate_every=5, patience=0
    )
    smoke["overrides"]["evaluation"].update(n_edits=150)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment(),
    )


def run_to_the_end(workdir: Path) -> subprocess.CompletedProcess:
    result = snakemake(workdir, *COMMAND)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def kill_when(workdir: Path, marker: str) -> None:
    """Start the command, wait for ``marker`` (a job's resumable state) to appear, then SIGKILL
    Snakemake's process group and make sure none of its processes survives."""
    log = open(workdir / "killed-run.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *COMMAND],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment(),
        start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (workdir / marker).exists():
            if process.poll() is not None:
                pytest.fail(f"the run ended before {marker} appeared:\n{tail(workdir)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{marker} did not appear within {TIMEOUT} s:\n{tail(workdir)}")
            time.sleep(0.02)
        family = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        _, alive = psutil.wait_procs(family, timeout=60)
        assert alive == [], f"processes outside the group survived: {alive}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        log.close()


def tail(workdir: Path) -> str:
    return (workdir / "killed-run.log").read_text()[-4000:]


def recover(workdir: Path) -> subprocess.CompletedProcess:
    """What the README says to do after a hard kill: unlock, then the same command again."""
    unlock = snakemake(workdir, "--unlock", "--config", "setup=smoke")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    return run_to_the_end(workdir)


def temporaries(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob(".*.tmp"))


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """An uninterrupted run: the reference every other run must match byte for byte."""
    workdir = workflow_copy(tmp_path_factory.mktemp("clean") / "workflow")
    run_to_the_end(workdir)
    return workdir


def test_two_clean_runs_give_byte_identical_metrics(clean_run, tmp_path):
    again = workflow_copy(tmp_path / "workflow")
    run_to_the_end(again)
    assert (again / TARGET).read_bytes() == (clean_run / TARGET).read_bytes()
    per_edit = [pd.read_csv(folder / EVAL_DIR / "per_edit.csv") for folder in (clean_run, again)]
    # The same modules chosen for every edit (timings aside, the per-edit table is the same).
    assert per_edit[0]["selected"].tolist() == per_edit[1]["selected"].tolist()


def rerun_from(clean_run: Path, dest: Path, *stale: str) -> Path:
    """A copy of the clean run's folder without ``stale`` results: the jobs that make them (and
    those downstream) run again, the data preparation does not."""
    shutil.copytree(clean_run, dest, symlinks=True)
    for name in stale:
        shutil.rmtree(dest / name)
    return dest


def test_training_killed_mid_run_resumes_to_identical_metrics(clean_run, tmp_path):
    stale = ("results/editors", "results/eval", "results/tables")
    workdir = rerun_from(clean_run, tmp_path / "workflow", *stale)
    kill_when(workdir, f"{EDITOR}.partial")
    # Nothing a rerun could take as finished: no editor, no evaluation, no table.
    assert not (workdir / EDITOR).exists()
    assert not (workdir / EVAL_DIR / "metrics.json").exists()
    assert not (workdir / TARGET).exists()

    # Without --unlock, Snakemake refuses and says what to do (the README's first step).
    refused = snakemake(workdir, *COMMAND)
    assert refused.returncode != 0
    assert "LockException" in refused.stderr + refused.stdout
    assert "--unlock" in refused.stderr + refused.stdout

    recover(workdir)
    log = (workdir / "results/logs/train_editor" / f"{RUN}.log").read_text()
    assert f"resuming {EDITOR}.partial at trajectory" in log
    assert (workdir / TARGET).read_bytes() == (clean_run / TARGET).read_bytes()
    assert not (workdir / f"{EDITOR}.partial").exists()
    assert temporaries(workdir) == []


def test_evaluation_killed_mid_stream_resumes_to_identical_metrics(clean_run, tmp_path):
    workdir = rerun_from(clean_run, tmp_path / "workflow", "results/eval", "results/tables")
    kill_when(workdir, f"{EVAL_DIR}/resume-state/progress.pt")
    assert not (workdir / EVAL_DIR / "metrics.json").exists()
    assert not (workdir / EVAL_DIR / "metrics_long.csv").exists()
    assert not (workdir / TARGET).exists()

    recover(workdir)
    log = (workdir / "results/logs/evaluate" / f"{RUN}.log").read_text()
    assert "resuming the stream after" in log
    assert (workdir / TARGET).read_bytes() == (clean_run / TARGET).read_bytes()
    assert not (workdir / EVAL_DIR / "resume-state").exists()
    assert temporaries(workdir) == []
