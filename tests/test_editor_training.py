"""Trajectory training: both networks learn, gradient terms are switchable, resume is exact."""

from __future__ import annotations

import csv

import pytest
import torch
from editor_helpers import tiny_job, tiny_model, toy_records

from hiedit.editor import load_editor
from hiedit.editor.trainer import Trainer, partial_path, train_editor
from hiedit.errors import CheckpointMismatchError

# Every trajectory replays the same records (n_train = trajectory_length): losses are comparable.
LEARN = {
    "n_train": 4,
    "trajectory_length": 4,
    "n_trajectories": 6,
    "meta_lr": 3e-3,
    "update_every": 1,
}


def _editor(variant="hiedit", **training):
    job = tiny_job(variant, training=training)
    model, tok = tiny_model(job)
    return load_editor(job, model, tok, None)


def _params(editor):
    nets = [p.detach().clone() for p in editor.nets.parameters()]
    router = [p.detach().clone() for p in editor.router.parameters()] if editor.router else []
    return nets, router


def _moved(before, after):
    return max((a - b).abs().max().item() for a, b in zip(before, after, strict=True))


def test_short_training_moves_both_networks_and_lowers_the_loss(tmp_path):
    editor = _editor(**LEARN)
    nets0, router0 = _params(editor)
    base = [m.weight.detach().clone() for m in editor.modules]
    result = train_editor(editor, toy_records(8), tmp_path / "editor.pt", progress=False)
    nets1, router1 = _params(editor)
    assert _moved(nets0, nets1) > 1e-4
    assert _moved(router0, router1) > 1e-4
    losses = [row["loss"] for row in result.rows]
    per_trajectory = [sum(losses[i : i + 4]) / 4 for i in range(0, len(losses), 4)]
    assert per_trajectory[-1] < per_trajectory[0]
    # The log is written next to the checkpoint, one row per step.
    with open(tmp_path / "editor.loss.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 * 4 and float(rows[0]["loss"]) == pytest.approx(losses[0])
    # Training leaves the base weights in place and stores static-k counts.
    for module, weight in zip(editor.modules, base, strict=True):
        torch.testing.assert_close(module.weight, weight)
    state = torch.load(tmp_path / "editor.pt", weights_only=False)
    assert state["complete"] and sum(state["selection_counts"]) == 4 * editor.k


def test_resume_equals_uninterrupted(tmp_path):
    full = _editor(n_trajectories=3)
    train_editor(full, toy_records(8), tmp_path / "full.pt", progress=False)
    part = _editor(n_trajectories=3)
    train_editor(part, toy_records(8), tmp_path / "part.pt", stop_after=1, progress=False)
    assert not (tmp_path / "part.pt").exists()  # unfinished runs never write the final path
    assert not torch.load(partial_path(tmp_path / "part.pt"), weights_only=False)["complete"]
    resumed = _editor(n_trajectories=3)
    result = train_editor(
        resumed, toy_records(8), tmp_path / "part.pt", resume=True, progress=False
    )
    assert not partial_path(tmp_path / "part.pt").exists()
    a = torch.load(tmp_path / "full.pt", weights_only=False)
    b = torch.load(tmp_path / "part.pt", weights_only=False)
    for key in ("nets", "router"):
        for name, value in a["networks"][key].items():
            torch.testing.assert_close(b["networks"][key][name], value, rtol=0, atol=0)
    assert a["selection_counts"] == b["selection_counts"]
    assert [r["loss"] for r in a["progress"]["rows"]] == [r["loss"] for r in result.rows]


def test_resume_refuses_a_checkpoint_from_another_configuration(tmp_path):
    editor = _editor(n_trajectories=2)
    train_editor(editor, toy_records(8), tmp_path / "e.pt", stop_after=1, progress=False)
    other = _editor(n_trajectories=2, back_depth=3)
    with pytest.raises(CheckpointMismatchError, match="training.back_depth"):
        train_editor(other, toy_records(8), tmp_path / "e.pt", resume=True, progress=False)


def _router_gradient(**training):
    editor = _editor(**training)
    trainer = Trainer(editor, toy_records(8))
    window = [trainer.step_records(0, 0)]
    trainer.train_step(window, 0)
    return torch.cat([p.grad.flatten() for p in editor.router.parameters() if p.grad is not None])


def test_router_gets_gradient_from_each_term_and_the_intrinsic_reward_matters():
    both = _router_gradient()
    pathwise_only = _router_gradient(score_function=False)
    score_only = _router_gradient(pathwise_gradient=False)
    no_intrinsic = _router_gradient(intrinsic_reward=False)
    for grad in (both, pathwise_only, score_only, no_intrinsic):
        assert grad.abs().sum() > 0
    torch.testing.assert_close(pathwise_only + score_only, both, atol=1e-6, rtol=1e-4)
    assert (no_intrinsic - both).abs().max() > 1e-6


def test_no_intrinsic_variant_uses_the_extrinsic_reward():
    editor = _editor("no-intrinsic")
    assert Trainer(editor, toy_records(8)).intrinsic is False
    assert Trainer(_editor("hiedit"), toy_records(8)).intrinsic is True


def test_rledit_trains_without_a_router(tmp_path):
    editor = _editor("rledit", n_trajectories=1)
    assert editor.router is None and editor.k == 4
    result = train_editor(editor, toy_records(8), tmp_path / "r.pt", progress=False)
    assert all(row["selected"] == "0;1;2;3" for row in result.rows)


@pytest.mark.parametrize("style,token", [("malmen", "ans"), ("mend", "ans"), ("malmen", "all")])
def test_other_styles_and_row_modes_train_and_edit(tmp_path, style, token):
    job = tiny_job(
        editor={"style": style, "token": token},
        training={"n_trajectories": 1, "trajectory_length": 3},
    )
    model, tok = tiny_model(job)
    editor = load_editor(job, model, tok, None)
    before = [p.detach().clone() for p in editor.nets.parameters()]
    result = train_editor(editor, toy_records(8), tmp_path / "e.pt", progress=False)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.rows)
    assert _moved(before, list(editor.nets.parameters())) > 0
    step = editor.edit_records(toy_records(1))
    assert len(step.selected) == editor.k


def test_reused_kl_targets_equal_a_fresh_forward_at_the_committed_weights():
    from hiedit.editor.losses import reference_forward, scoring_batch

    editor = _editor(back_depth=3, trajectory_length=4)
    trainer = Trainer(editor, toy_records(8))
    editor.reset_weights()
    window = []
    for step in range(3):
        window.append(trainer.step_records(0, step))
        window = window[-3:]
        trainer.train_step(window, step)
    # The cache holds every window record; recompute them at the weights the commits wrote.
    scoring = scoring_batch(editor.tokenizer, window, 0.95, "cpu")
    assert sorted(trainer.kl_targets) == sorted(scoring.record_ids)
    captures, _ = editor.capture(window[-1])
    fresh, _ = reference_forward(
        editor.model, editor.modules, editor.factors(captures), scoring, with_full=False
    )
    for rid, logp in zip(scoring.record_ids, fresh, strict=True):
        torch.testing.assert_close(trainer.kl_targets[rid], logp, rtol=1e-4, atol=1e-4)
    # ... and the commits really moved them (the check above is not about base weights).
    editor.reset_weights()
    base, _ = reference_forward(
        editor.model, editor.modules, editor.factors(captures), scoring, with_full=False
    )
    assert max((a - b).abs().max().item() for a, b in zip(base, fresh, strict=True)) > 1e-3


def _accumulated_gradients(side_path_chunk, pack_tokens=0):
    editor = _editor(
        back_depth=3,
        trajectory_length=4,
        side_path_chunk=side_path_chunk,
        pack_tokens=pack_tokens,
    )
    trainer = Trainer(editor, toy_records(8))
    editor.reset_weights()
    window, losses = [], []
    widths: list[int] = []  # positions per row entering the top layer (packed rows are wider)
    top = editor.model.get_decoder().layers[-1]
    handle = top.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    try:
        for step in range(4):
            window.append(trainer.step_records(0, step))
            window = window[-3:]
            losses.append(trainer.train_step(window, step)["loss"])
    finally:
        handle.remove()
    params = list(editor.nets.parameters()) + list(editor.router.parameters())
    return losses, [p.grad.clone() for p in params], max(widths)


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_side_path_gives_the_single_pass_loss_and_gradients(chunk):
    single_losses, single_grads, _ = _accumulated_gradients(0)
    chunk_losses, chunk_grads, _ = _accumulated_gradients(chunk)
    torch.testing.assert_close(chunk_losses, single_losses, rtol=1e-5, atol=1e-6)
    assert sum(g.abs().sum() for g in single_grads) > 0
    for got, want in zip(chunk_grads, single_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("chunk", "pack_tokens"), [(0, 80), (0, 1000), (2, 80)])
def test_packed_training_steps_give_the_padded_loss_and_gradients(chunk, pack_tokens):
    """Packing the scored sequences (side path, KL targets and L_low(1)) changes only rounding."""
    padded_losses, padded_grads, padded_width = _accumulated_gradients(0)
    packed_losses, packed_grads, packed_width = _accumulated_gradients(chunk, pack_tokens)
    assert packed_width > padded_width  # the scored sequences did share rows
    torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-5, atol=1e-6)
    for got, want in zip(packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
