"""Reliability battery, storage and checkpoints: a full disk, a read-only results folder and a
checkpoint from another configuration each stop with a message naming the folder, file or keys,
and leave nothing a later run could take for a finished result.

A full or read-only filesystem is a small tmpfs mounted for the test (root can write through any
file mode, so ``chmod`` proves nothing); without the right to mount, those tests skip and the
monkeypatched ENOSPC tests below still run.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
from editor_helpers import tiny_job, tiny_model, toy_records
from workflow_helpers import ROOT, copy_workflow, run_snakemake

import hiedit.atomic
from hiedit.atomic import save_torch, write_all_or_nothing
from hiedit.cli import main
from hiedit.config import job_config, load_config, resolve_setup
from hiedit.data import write_split
from hiedit.editor import load_editor
from hiedit.editor.trainer import partial_path, train_editor
from hiedit.evaluation.outputs import RESULT_FILES, write_evaluation
from hiedit.evaluation.stream import PROGRESS_FILE, StateFolder, StreamSettings, run_stream


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@contextmanager
def tmpfs(target: Path, options: str):
    """A tmpfs mounted at ``target`` for the block (the test skips where mounting is refused)."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a test filesystem needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=True)


def fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until its filesystem is full; return the filler file."""
    filler = folder / "filler"
    block = b"\0" * 4096
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def assert_disk_full(err: pytest.ExceptionInfo, folder: Path) -> None:
    assert err.value.errno == errno.ENOSPC
    assert f"No space left on device while writing into {folder}" in str(err.value)


# --- a full disk --------------------------------------------------------------------------------


def test_save_torch_into_a_full_filesystem_keeps_the_old_file(tmp_path):
    with tmpfs(tmp_path / "fs", "size=256k") as fs:
        dest = fs / "editor.pt"
        save_torch(dest, {"version": torch.zeros(4)})
        with pytest.raises(OSError) as err:
            save_torch(dest, {"version": torch.ones(1 << 18)})  # 1 MiB into 256 KiB
        assert_disk_full(err, fs)
        assert listing(fs) == ["editor.pt"]  # no temporary file left
        assert torch.equal(torch.load(dest)["version"], torch.zeros(4))


def test_result_files_into_a_full_filesystem_appear_not_at_all(tmp_path):
    with tmpfs(tmp_path / "fs", "size=256k") as fs:
        out = fs / "eval"
        per_edit = pd.DataFrame({"index": range(40000), "selected": ["model.layers.1.mlp"] * 40000})
        long = pd.DataFrame(
            [
                {
                    "model": "m",
                    "dataset": "d",
                    "variant": "hiedit",
                    "seed": 0,
                    "n_edits": 1,
                    "metric": "efficacy",
                    "value": 0.5,
                }
            ]
        )
        with pytest.raises(OSError) as err:
            write_evaluation(
                out,
                summary={"efficacy": 0.5},
                long=long,
                per_edit=per_edit,
                curve=pd.DataFrame({"n_edits": [1]}),
                runinfo={},
            )
        assert_disk_full(err, out)
        assert listing(out) == []  # in particular no metrics.json, the completeness marker


def _settings(**kw) -> StreamSettings:
    values = dict(
        n_edits=6, num_pre=2, n_curve_points=2, curve_sample=2, batch_size=4, seed=0, save_every=2
    )
    return StreamSettings(**{**values, **kw})


def _stream(state_dir: Path | None, fill_after: int | None = None):
    """The tiny editor's stream; with ``fill_after``, the disk fills up after that many edits."""
    job = tiny_job()
    model, tokenizer = tiny_model(job)
    editor = load_editor(job, model, tokenizer)
    if fill_after is not None:
        original = editor.edit_records
        calls = []

        def edit_then_fill(records):
            calls.append(1)
            if len(calls) == fill_after + 1:
                fill(state_dir.parent)
            return original(records)

        editor.edit_records = edit_then_fill
    return run_stream(
        editor, model, tokenizer, toy_records(8), _settings(), state_dir=state_dir, progress=False
    )


def test_stream_state_save_into_a_full_disk_keeps_the_last_state_and_resumes(tmp_path):
    reference = _stream(None)
    with tmpfs(tmp_path / "fs", "size=1m") as fs:
        state = fs / "resume-state"
        # Saves after 0 and 2 edits fit; the disk fills during the third edit, so the save
        # after 4 edits fails.
        with pytest.raises(OSError) as err:
            _stream(state, fill_after=2)
        assert_disk_full(err, state)
        assert listing(state) == ["editor-00000002.pt", PROGRESS_FILE]
        assert torch.load(state / PROGRESS_FILE, weights_only=True)["done"] == 2

        # What a user does: free space, run the same command again.
        (fs / "filler").unlink()
        resumed = _stream(state)
        assert resumed.resumed_from == 2
        assert resumed.metrics == reference.metrics
        assert resumed.per_edit["selected"].tolist() == reference.per_edit["selected"].tolist()


# The same without a mount: the writers fail as they do on a full disk.


def test_torch_write_failure_on_a_nearly_full_disk_is_reported_as_a_full_disk(
    tmp_path, monkeypatch
):
    def failing_save(obj, path):
        Path(path).write_bytes(b"PK\3\4 half a zip")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", failing_save)
    free = type("Usage", (), {"free": 0})
    monkeypatch.setattr(hiedit.atomic.shutil, "disk_usage", lambda _: free)
    with pytest.raises(OSError) as err:
        save_torch(tmp_path / "state" / "progress.pt", {"done": 3})
    assert_disk_full(err, tmp_path / "state")
    assert listing(tmp_path / "state") == []


def test_enospc_from_a_writer_names_the_folder_and_other_errors_stay_what_they_are(tmp_path):
    def full(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    def broken(tmp: Path) -> None:
        raise RuntimeError("a bug in the writer")

    out = tmp_path / "eval"
    with pytest.raises(OSError) as err:
        write_all_or_nothing(
            out, {"per_edit.csv": lambda t: t.write_text("x"), "metrics.json": full}
        )
    assert_disk_full(err, out)
    assert listing(out) == []
    # Plenty of free space here: a failure that is not a full disk is not called one.
    with pytest.raises(RuntimeError, match="a bug in the writer"):
        write_all_or_nothing(out, {"metrics.json": broken})
    assert listing(out) == []


def test_a_failed_progress_write_keeps_the_previous_state_pair(tmp_path, monkeypatch, tiny_llama):
    job, model, tokenizer = tiny_llama
    editor = load_editor(job, model, tokenizer)
    folder = StateFolder(tmp_path / "state", {"inputs": 1})
    folder.save(editor, {"done": 2})
    real_save = hiedit.atomic.save_torch

    def progress_fails(path, obj):
        if Path(path).name == PROGRESS_FILE:
            raise OSError(errno.ENOSPC, f"No space left on device while writing into {tmp_path}")
        return real_save(path, obj)

    monkeypatch.setattr(hiedit.atomic, "save_torch", progress_fails)
    with pytest.raises(OSError, match="No space left on device"):
        folder.save(editor, {"done": 4})
    assert listing(tmp_path / "state") == ["editor-00000002.pt", PROGRESS_FILE]
    assert folder.load()["editor_state"] == "editor-00000002.pt"


def test_the_stream_state_removes_the_temporaries_of_a_killed_save(tmp_path, tiny_llama):
    """A hard kill during a save leaves the outer temporary and, since the editor writes
    atomically too, a temporary of that temporary; the next save and the final removal clear
    both, and leave a user's own files in a shared folder alone."""
    job, model, tokenizer = tiny_llama
    editor = load_editor(job, model, tokenizer)
    state = tmp_path / "state"
    state.mkdir()
    litter = [
        ".editor-00000004.pt.678e0xen.tmp",
        "..editor-00000004.pt.678e0xen.tmp.7w3y41gm.tmp",
        ".progress.pt.k3x9_q2a.tmp",
    ]
    for name in (*litter, "notes.txt", ".mine.tmp"):
        (state / name).write_bytes(b"half")
    folder = StateFolder(state, {"inputs": 1})
    folder.save(editor, {"done": 2})
    assert listing(state) == [".mine.tmp", "editor-00000002.pt", "notes.txt", PROGRESS_FILE]
    for name in litter:
        (state / name).write_bytes(b"half")
    folder.remove()
    assert listing(state) == [".mine.tmp", "notes.txt"]


def test_a_rerun_removes_what_a_killed_write_of_the_same_file_left(tmp_path):
    folder = tmp_path / "editors"
    folder.mkdir()
    stale = folder / ".editor.pt.k3x9_q2a.tmp"  # a write of editor.pt killed half way
    other = folder / ".editor.pt.partial.k3x9_q2a.tmp"  # another file's: not ours to remove
    for path in (stale, other):
        path.write_bytes(b"half")
    save_torch(folder / "editor.pt", {"a": 1})
    assert listing(folder) == [other.name, "editor.pt"]


def test_a_saved_file_and_its_folder_are_flushed_before_the_save_returns(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the synced descriptors")
    monkeypatch.setattr(hiedit.atomic.os, "fsync", fsync)
    dest = tmp_path / "state" / "progress.pt"
    save_torch(dest, {"done": 1})
    assert len(synced) == 2
    assert Path(synced[0]).parent == dest.parent and Path(synced[0]).name.endswith(".tmp")
    assert Path(synced[1]) == dest.parent


# --- a read-only results folder -------------------------------------------------------------------


@pytest.fixture
def smoke_job(tmp_path) -> Path:
    config = load_config(ROOT / "config.yaml")
    job = job_config(
        config, resolve_setup(config, "smoke"), "tiny-llama", "geofacts-zsre", "hiedit", 0
    )
    # Eight toy records: all of them train (no validation slice).
    job["training"].update(n_trajectories=1, validation_size=0)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


@pytest.fixture
def split(tmp_path) -> Path:
    path = tmp_path / "data" / "split.parquet"
    write_split(toy_records(8), path)
    return path


def test_save_into_a_read_only_folder_is_not_called_a_full_disk(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=256k") as ro:
        with pytest.raises(OSError) as err:
            save_torch(ro / "editor.pt", {"a": 1})
        assert err.value.errno == errno.EROFS
        assert "No space" not in str(err.value)


def test_train_and_evaluate_stop_at_once_on_a_read_only_results_folder(
    tmp_path, smoke_job, split, monkeypatch, capsys
):
    import hiedit.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the results folder was checked")

    monkeypatch.setattr(hiedit.models, "load_model", no_model)
    with tmpfs(tmp_path / "results", "ro,size=256k") as results:
        out = results / "eval" / "tiny-llama" / "geofacts-zsre" / "hiedit" / "seed0"
        run = ["--run-config", str(smoke_job), "--no-progress"]
        code = main(
            ["evaluate", *run, "--eval-data", str(split), "--untrained", "--out-dir", str(out)]
        )
        assert code == 2
        assert f"Read-only file system: cannot write into {out}" in capsys.readouterr().err
        editor = results / "editors" / "editor.pt"
        assert main(["train", *run, "--train-data", str(split), "--out", str(editor)]) == 2
        assert (
            f"Read-only file system: cannot write into {editor.parent}" in capsys.readouterr().err
        )
        assert listing(results) == []


@pytest.mark.workflow
def test_workflow_on_a_read_only_results_folder_names_it_and_stays_unlocked(tmp_path):
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    with tmpfs(workdir / "results", "ro,size=256k"):
        result = run_snakemake(
            ["--cores", "1", "--config", "setup=smoke", "--", "results/data/geofacts/stats.json"],
            workdir,
            timeout=300,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "build_geofacts" in output and "Read-only file system: 'results/data'" in output
    locks = workdir / ".snakemake" / "locks"
    assert listing(locks) == []  # a plain rerun after remounting needs no --unlock


# --- a checkpoint from another configuration ---------------------------------------------------


def _train(job_path: Path, split: Path, out: Path, **training) -> None:
    from hiedit.data import read_split

    stop = training.pop("stop", None)
    job = json.loads(job_path.read_text())
    job["training"].update(training)
    model, tokenizer = tiny_model(job)
    editor = load_editor(job, model, tokenizer)
    train_editor(editor, read_split(split), out, stop_after=stop, progress=False)


def _write_previous_results(out: Path) -> None:
    out.mkdir(parents=True)
    for name in RESULT_FILES:
        (out / name).write_text("{}\n" if name.endswith(".json") else "a\n1\n")


def _variant_job(smoke_job: Path, tmp_path: Path, name: str, **changes) -> Path:
    job = json.loads(smoke_job.read_text())
    for section, values in changes.items():
        if isinstance(values, dict):
            job[section].update(values)
        else:
            job[section] = values
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(job))
    return path


@pytest.mark.parametrize(
    ("changes", "messages"),
    [
        (
            {"editor": {"rank": 8, "router_hidden": 8}},
            [
                "editor.rank: checkpoint 16 vs config 8",
                "editor.router_hidden: checkpoint 16 vs config 8",
            ],
        ),
        (
            {"variant": "no-intrinsic"},
            ["trained_variant: checkpoint 'hiedit' vs config 'no-intrinsic'"],
        ),
        ({"variant": "hiedit-k1"}, ["k: checkpoint 2 vs config 1"]),
    ],
    ids=["other-network-shape", "other-variant", "other-k"],
)
def test_evaluate_refuses_a_checkpoint_of_another_configuration(
    tmp_path, smoke_job, split, capsys, changes, messages
):
    editor = tmp_path / "editors" / "editor.pt"
    _train(smoke_job, split, editor)
    other = _variant_job(smoke_job, tmp_path, "other", **changes)
    out = tmp_path / "eval"
    _write_previous_results(out)
    code = main(
        [
            "evaluate",
            "--run-config",
            str(other),
            "--eval-data",
            str(split),
            "--checkpoint",
            str(editor),
            "--out-dir",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{editor} was written under a different configuration" in err
    for message in messages:
        assert message in err
    # The previous run's files are gone: this folder must not look like the new run's result.
    assert listing(out) == []


def test_resuming_training_from_another_configuration_says_what_to_delete(
    tmp_path, smoke_job, split, capsys
):
    editor = tmp_path / "editors" / "editor.pt"
    _train(smoke_job, split, editor, n_trajectories=2, checkpoint_every=1, stop=1)
    assert partial_path(editor).is_file() and not editor.exists()
    other = _variant_job(smoke_job, tmp_path, "other", training={"back_depth": 3})
    run = ["train", "--run-config", str(other), "--train-data", str(split), "--out", str(editor)]
    assert main([*run, "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "training.back_depth: checkpoint 2 vs config 3" in err
    assert f"to train under the new configuration, delete {partial_path(editor)}" in err
    assert not editor.exists()
