"""The stateful editor: sequential commits, variants, requests, errors, state save/load."""

from __future__ import annotations

import pytest
import torch
from editor_helpers import MODULES, candidate_weights, tiny_job, tiny_model, toy_records

from hiedit.editor import load_editor
from hiedit.editor.trainer import train_editor
from hiedit.errors import CheckpointMismatchError, ConfigError, NonFiniteError


def _editor(variant="hiedit", checkpoint=None, **sections):
    job = tiny_job(variant, **sections)
    model, tok = tiny_model(job)
    return load_editor(job, model, tok, checkpoint)


def test_edit_records_commits_only_the_selected_modules():
    editor = _editor()
    before = candidate_weights(editor)
    step = editor.edit_records(toy_records(1))
    assert len(step.selected) == editor.k == 2 and step.seconds > 0
    # The phases partition the step: each timed, in order, adding up to the step's time.
    assert list(step.phases) == ["capture", "route", "update", "commit"]
    assert all(v > 0 for v in step.phases.values())
    assert sum(step.phases.values()) == pytest.approx(step.seconds)
    after = candidate_weights(editor)
    for name, w0, w1 in zip(MODULES, before, after, strict=True):
        changed = not torch.equal(w0, w1)
        assert changed == (name in step.selected)
    editor.reset_model()
    for w0, module in zip(before, editor.modules, strict=True):
        assert torch.equal(w0, module.weight)


def test_untrained_editors_are_seeded():
    a, b = _editor(), _editor()
    for (name, pa), pb in zip(
        a.nets.state_dict().items(), b.nets.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    job = tiny_job()
    job["seed"] = 1
    model, tok = tiny_model(job)
    other = load_editor(job, model, tok, None)
    assert not torch.equal(other.router.gate.weight, a.router.gate.weight)


def test_hiedit_rand_draws_differ_per_edit_but_are_seeded():
    def draws():
        editor = _editor("hiedit-rand")
        return [tuple(editor.edit_records([r]).selected) for r in toy_records(8)]

    first, second = draws(), draws()
    assert first == second
    assert len(set(first)) > 1
    assert all(len(s) == 2 for s in first)


def test_rledit_edits_every_module_and_static_k_uses_its_fixed_set():
    assert _editor("rledit").edit_records(toy_records(1)).selected == MODULES
    fixed = [MODULES[3], MODULES[0]]
    editor = _editor("static-k", evaluation={"static_k_modules": fixed})
    for record in toy_records(3):
        assert editor.edit_records([record]).selected == [MODULES[0], MODULES[3]]
    with pytest.raises(ConfigError, match="static_k_modules"):
        _editor("static-k").edit_records(toy_records(1))
    with pytest.raises(ConfigError, match="not candidates"):
        _editor("static-k", evaluation={"static_k_modules": ["model.nope"]}).edit_records(
            toy_records(1)
        )


def test_k_sweep_variant_overrides_k():
    editor = _editor("hiedit-k3")
    assert editor.k == 3 and len(editor.edit_records(toy_records(1)).selected) == 3
    with pytest.raises(ConfigError, match="K must be"):
        _editor("hiedit-k9")


def test_static_k_from_a_trained_checkpoint_and_checkpoint_mismatch(tmp_path):
    trained = _editor(training={"n_trajectories": 1})
    train_editor(trained, toy_records(8), tmp_path / "e.pt", progress=False)
    editor = _editor("static-k", checkpoint=tmp_path / "e.pt")
    counts = editor.selection_counts
    top = sorted(sorted(range(4), key=lambda i: (-counts[i], i))[:2])
    assert editor.edit_records(toy_records(1)).selected == [MODULES[i] for i in top]
    with pytest.raises(CheckpointMismatchError) as err:
        _editor(checkpoint=tmp_path / "e.pt", editor={"rank": 4, "token": "ans"})
    assert "editor.rank" in str(err.value) and "editor.token" in str(err.value)
    with pytest.raises(CheckpointMismatchError, match="trained_variant"):
        _editor("no-intrinsic", checkpoint=tmp_path / "e.pt")


def test_edit_requests_and_their_errors():
    editor = _editor()
    steps = editor.edit(
        [
            {"prompt": "What is the capital of Peru?", "target_new": "Oslo"},
            {
                "prompt": "Where is Rome?",
                "target_new": "Spain",
                "subject": "Rome",
                "rephrase_prompt": "Rome is in",
                "locality_prompt": "Where is Oslo?",
                "locality_ground_truth": "Norway",
            },
        ]
    )
    assert len(steps) == 2 and editor.step == 2
    before = candidate_weights(editor)
    with pytest.raises(ConfigError, match="request 1: missing key 'target_new'"):
        editor.edit([{"prompt": "a", "target_new": "b"}, {"prompt": "c"}])
    with pytest.raises(ConfigError, match="request 0: key 'target_new'"):
        editor.edit([{"prompt": "a", "target_new": ""}])
    with pytest.raises(ConfigError, match="request 0: key 'subject'"):
        editor.edit([{"prompt": "a b", "target_new": "c", "subject": "zz"}])
    for w0, module in zip(before, editor.modules, strict=True):
        assert torch.equal(w0, module.weight)  # nothing edited when a request is bad


def test_nan_in_an_update_raises_naming_step_and_module():
    editor = _editor("rledit")
    editor.edit_records(toy_records(1))
    with torch.no_grad():
        editor.nets[editor.groups[2]].log_lr[editor.local_index[2]] = float("nan")
    before = candidate_weights(editor)
    with pytest.raises(NonFiniteError, match=f"step 1: .*{MODULES[2]}"):
        editor.edit_records(toy_records(2)[1:])
    for w0, module in zip(before, editor.modules, strict=True):
        assert torch.equal(w0, module.weight)


def test_save_and_load_state_resume_the_stream_exactly(tmp_path):
    records = toy_records(6)
    full = _editor("hiedit-rand")
    full_steps = [full.edit_records([r]).selected for r in records]
    first = _editor("hiedit-rand")
    for r in records[:3]:
        first.edit_records([r])
    first.save_state(tmp_path / "state.pt")
    second = _editor("hiedit-rand")
    second.load_state(tmp_path / "state.pt")
    rest = [second.edit_records([r]).selected for r in records[3:]]
    assert rest == full_steps[3:]
    for a, b in zip(full.modules, second.modules, strict=True):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    with pytest.raises(CheckpointMismatchError, match="variant"):
        _editor("hiedit").load_state(tmp_path / "state.pt")


def test_auto_precision_keeps_an_fp32_master_copy_of_bf16_weights_only():
    job = tiny_job()
    job["model"]["dtype"] = "bfloat16"
    model, tok = tiny_model(job)
    editor = load_editor(job, model, tok, None)
    step = editor.edit_records(toy_records(1))
    assert editor.model.dtype == torch.bfloat16
    for name, module in zip(editor.module_names, editor.modules, strict=True):
        weight = module.weight
        assert editor.precision.mode_for(weight) == "master"
        mode, master = editor.precision.buffer_for(weight)
        if name in step.selected:  # the weight is always the rounded master copy
            assert master.dtype == torch.float32
            assert torch.equal(weight, master.to(torch.bfloat16))
    fp32 = _editor()
    fp32.edit_records(toy_records(1))
    assert all(fp32.precision.mode_for(m.weight) == "nearest" for m in fp32.modules)
    assert fp32.precision.state_dict()["buffers"] == {}


def test_tiny_job_builds_an_editor(tiny_llama, records):
    job, model, tok = tiny_llama
    editor = load_editor(job, model, tok, None)
    assert editor.module_names == MODULES
    assert editor.k == 2
    assert len(records) == 8 and len({r.record_id for r in records}) == 8


def _bf16_editor(variant="hiedit"):
    job = tiny_job(variant)
    job["model"]["dtype"] = "bfloat16"
    model, tok = tiny_model(job)
    return load_editor(job, model, tok, None)


def test_bf16_stream_state_holds_masters_not_weights_and_resumes_bit_identically(tmp_path):
    records = toy_records(6)
    full = _bf16_editor()
    for r in records:
        full.edit_records([r])
    first = _bf16_editor()
    for r in records[:3]:
        first.edit_records([r])
    first.save_state(tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    mastered = set(state["precision"]["buffers"])
    assert mastered and not mastered & set(state["weights"])  # each weight written once
    assert "initial_networks" not in state and "networks" not in state
    second = _bf16_editor()
    second.load_state(tmp_path / "state.pt")
    for r in records[3:]:
        second.edit_records([r])
    for a, b in zip(full.modules, second.modules, strict=True):
        assert torch.equal(a.weight, b.weight)
    for name in second.normalizer_state():
        assert torch.equal(second.normalizer_state()[name], full.normalizer_state()[name])
