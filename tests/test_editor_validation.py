"""Validation slice, early stopping, the tuned-step search and the step-only comparator."""

from __future__ import annotations

import csv

import pytest
import torch
from editor_helpers import tiny_job, tiny_model, toy_records

from hiedit.editor import load_editor
from hiedit.editor import validation as validation_module
from hiedit.editor.step_search import search_step_sizes, step_grid
from hiedit.editor.trainer import train_editor
from hiedit.editor.validation import split_validation, validation_score


def _editor(variant="hiedit", **training):
    job = tiny_job(variant, training=training)
    model, tok = tiny_model(job)
    return load_editor(job, model, tok, None)


def test_validation_slice_is_subject_disjoint_fixed_and_sized():
    records = toy_records(16)  # eight subjects, two records each
    train, held_out = split_validation(records, 4)
    assert len(held_out) == 4 and len(train) == 12
    assert not {r.subject for r in train} & {r.subject for r in held_out}
    again_train, again_held = split_validation(list(records), 4)
    assert [r.record_id for r in again_held] == [r.record_id for r in held_out]
    assert split_validation(records, 0) == (records, [])


def test_validation_score_is_the_harmonic_mean_of_efficacy_generalisation_locality():
    metrics = {"efficacy": 0.6, "generalization": 0.3, "specificity_agreement_correct": 0.9}
    assert validation_score(metrics) == pytest.approx(3 / (1 / 0.6 + 1 / 0.3 + 1 / 0.9))
    assert validation_score({**metrics, "specificity_agreement_correct": 0.0}) == 0.0
    # gold specificity plays no part: doing nothing (locality 1) loses to editing that keeps it
    nothing = {"efficacy": 0.2, "generalization": 0.2, "specificity_agreement_correct": 1.0}
    editing = {"efficacy": 0.4, "generalization": 0.35, "specificity_agreement_correct": 0.9}
    assert validation_score(editing) > validation_score(nothing)
    # undefined locality (no unrelated position right before editing) counts as 1
    undefined = {**metrics, "specificity_agreement_correct": float("nan")}
    assert validation_score(undefined) == pytest.approx(3 / (1 / 0.6 + 1 / 0.3 + 1))


def _scripted(monkeypatch, scores):
    """Validation streams that return the scores in order (and record what they edit)."""
    seen = []

    def run(self):
        seen.append([r.record_id for r in self.records])
        score = scores[min(len(seen) - 1, len(scores) - 1)]
        return dict.fromkeys(validation_module.SCORE_METRICS, score)

    monkeypatch.setattr(validation_module.ValidationStream, "run", run)
    return seen


def test_early_stopping_keeps_the_best_networks_and_stops_after_patience(tmp_path, monkeypatch):
    # before training, then after each trajectory: best after trajectory 1, two worse ones.
    seen = _scripted(monkeypatch, [0.1, 0.5, 0.4, 0.3, 0.9])
    training = {"n_trajectories": 6, "validation_size": 4, "validation_edits": 2, "patience": 2}
    snapshots = {}
    editor = _editor(**training)
    original = editor.network_state

    def remember():
        state = original()
        snapshots[len(snapshots)] = state
        return state

    editor.network_state = remember
    train_editor(editor, toy_records(16), tmp_path / "e.pt", progress=False)
    with open(tmp_path / "e.validation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["trajectory"]) for r in rows] == [0, 1, 2, 3]  # stopped: 2 without improving
    assert [float(r["score"]) for r in rows] == pytest.approx([0.1, 0.5, 0.4, 0.3])
    state = torch.load(tmp_path / "e.pt", weights_only=False)
    best = snapshots[1]  # taken at the validation after trajectory 1
    for name, value in best["nets"].items():
        assert torch.equal(state["networks"]["nets"][name], value)
    held_out = {r.record_id for r in split_validation(toy_records(16), 4)[1]}
    assert all(set(ids) <= held_out for ids in seen)


def test_training_resumes_with_its_validation_state(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.1, 0.5, 0.4, 0.6])
    training = {"n_trajectories": 3, "validation_size": 4, "validation_edits": 2, "patience": 0}
    train_editor(_editor(**training), toy_records(16), tmp_path / "a.pt", progress=False)
    _scripted(monkeypatch, [0.1, 0.5, 0.4, 0.6])
    train_editor(
        _editor(**training), toy_records(16), tmp_path / "b.pt", stop_after=1, progress=False
    )
    train_editor(
        _editor(**training), toy_records(16), tmp_path / "b.pt", resume=True, progress=False
    )
    a = (tmp_path / "a.validation.csv").read_text()
    assert a == (tmp_path / "b.validation.csv").read_text()
    for name, value in torch.load(tmp_path / "a.pt", weights_only=False)["networks"][
        "nets"
    ].items():
        other = torch.load(tmp_path / "b.pt", weights_only=False)["networks"]["nets"][name]
        assert torch.equal(other, value)


def test_step_grid_doubles_between_its_bounds():
    grid = step_grid(1e-5, 1e-2)
    assert grid[0] == 1e-5 and len(grid) == 10 and grid[-1] == pytest.approx(5.12e-3)
    assert all(b == pytest.approx(2 * a) for a, b in zip(grid, grid[1:], strict=False))


def test_tuned_step_search_uses_only_the_validation_slice(tmp_path, monkeypatch):
    seen = []
    original = validation_module.ValidationStream.run

    def run(self):
        seen.append({r.record_id for r in self.records})
        return original(self)

    monkeypatch.setattr(validation_module.ValidationStream, "run", run)
    training = {"validation_size": 4, "validation_edits": 3, "step_search_passes": 1}
    editor = _editor("tuned-step", **training)
    records = toy_records(16)
    search_step_sizes(editor, records, tmp_path / "t.pt")
    train, held_out = split_validation(records, 4)
    allowed = {r.record_id for r in held_out}
    assert seen and all(ids <= allowed for ids in seen)
    grid = step_grid(1e-4, 1e-2)
    state = torch.load(tmp_path / "t.pt", weights_only=False)
    assert all(any(s == pytest.approx(g) for g in grid) for s in state["step_sizes"])
    # 7 shared values, then one coordinate pass over 4 modules (one or two neighbours each)
    with open(tmp_path / "t.validation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(seen) and len(grid) + 4 <= len(rows) <= len(grid) + 8
    best = max(float(r["score"]) for r in rows)
    # the checkpoint evaluates with the chosen step sizes
    loaded = load_editor(editor.job, editor.model, editor.tokenizer, tmp_path / "t.pt")
    steps = [
        float(loaded.nets[loaded.groups[i]].step_size(loaded.local_index[i])) for i in range(4)
    ]
    assert steps == pytest.approx(state["step_sizes"], rel=1e-5)
    assert best >= float(rows[0]["score"])


def test_step_only_training_moves_only_the_step_sizes(tmp_path):
    editor = _editor("step-only", n_trajectories=2, meta_lr=1e-2, step_size_lr=0.1)
    before = {n: p.detach().clone() for n, p in editor.nets.named_parameters()}
    router = {n: p.detach().clone() for n, p in editor.router.named_parameters()}
    train_editor(editor, toy_records(8), tmp_path / "s.pt", progress=False)
    for name, param in editor.nets.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == name.endswith("log_lr"), name
    for name, param in editor.router.named_parameters():
        assert torch.equal(param, router[name]), name
