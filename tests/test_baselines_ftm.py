"""FT-M baseline: answer-NLL fine-tuning per edit, early stop, L∞ constraint, resumable state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from editor_helpers import MODULES, tiny_job, tiny_model, toy_records

from hiedit.baselines.ft_m import FTMConfig, build
from hiedit.data.tokenize import IGNORE_INDEX, encode_qa
from hiedit.errors import CheckpointMismatchError, ConfigError, ModelError
from hiedit.evaluation.metrics import metric_columns
from hiedit.evaluation.stream import StreamSettings, run_stream

ROOT = Path(__file__).resolve().parents[1]
# Larger than EasyEdit's 5e-4: the tiny random model needs bigger steps within a few iterations.
TEST_SETTINGS = {"lr": 1e-2, "steps": 10}


def _editor(job=None, **values):
    job = job or tiny_job()
    model, tok = tiny_model(job)
    settings = FTMConfig.from_mapping({**TEST_SETTINGS, **values})
    return build(settings, model, tok, module_names=MODULES, seed=0, stats=None)


def _answer_log_prob(editor, qa) -> float:
    batch = encode_qa(editor.tokenizer, [qa.prompt], [qa.target])
    with torch.no_grad():
        logp = editor.model(**batch.model_inputs()).logits.float().log_softmax(-1)
    positions = batch.labels != IGNORE_INDEX
    return float(logp[positions].gather(-1, batch.labels[positions][:, None]).sum())


def _all_argmax(editor, qa) -> bool:
    batch = encode_qa(editor.tokenizer, [qa.prompt], [qa.target])
    with torch.no_grad():
        logits = editor.model(**batch.model_inputs()).logits
    positions = batch.labels != IGNORE_INDEX
    return bool((logits[positions].argmax(-1) == batch.labels[positions]).all())


def test_one_edit_raises_the_target_probability_and_only_touches_the_chosen_weights():
    editor = _editor()
    record = toy_records(1)[0]
    before = {n: p.detach().clone() for n, p in editor.model.named_parameters()}
    start = _answer_log_prob(editor, record.edit)
    step = editor.edit_records([record])
    assert _answer_log_prob(editor, record.edit) > start + 1.0
    assert step.selected == MODULES and 1 <= editor.last_steps <= 10
    assert list(step.phases) == ["update", "commit"]
    assert sum(step.phases.values()) == pytest.approx(step.seconds, rel=1e-3)
    weights = {f"{m}.weight" for m in MODULES}
    for name, param in editor.model.named_parameters():
        assert torch.equal(param, before[name]) == (name not in weights), name
        # Nothing in the model collects gradients: only the per-edit copies require them.
        assert param.grad is None and not param.requires_grad


def test_early_stop_once_every_answer_token_is_the_argmax():
    editor = _editor(steps=200, stop_loss=0.0)
    record = toy_records(1)[0]
    editor.edit_records([record])
    assert editor.last_steps < 200
    assert _all_argmax(editor, record.edit)
    # Already solved: the next edit of the same fact takes no step and changes nothing.
    weights = [m.weight.detach().clone() for m in editor.modules]
    editor.edit_records([record])
    assert editor.last_steps == 0
    assert all(torch.equal(w, m.weight) for w, m in zip(weights, editor.modules, strict=True))


def test_stop_loss_ends_the_edit_early():
    # Stopping when the loss is under a (huge) threshold takes no step at all.
    editor = _editor(stop_loss=1e6)
    editor.edit_records(toy_records(1))
    assert editor.last_steps == 0


def test_norm_constraint_bounds_the_change_of_each_edit():
    eps = 1e-3
    editor = _editor(norm_constraint=eps, lr=0.1)
    for record in toy_records(3):
        before = [m.weight.detach().clone() for m in editor.modules]
        editor.edit_records([record])
        changes = [
            (m.weight - w).abs().max().item() for m, w in zip(editor.modules, before, strict=True)
        ]
        assert max(changes) <= eps * (1 + 1e-5)
        assert max(changes) > eps / 2  # the constraint is active at this step size


def test_explicit_module_list_and_unknown_module():
    job = tiny_job()
    model, tok = tiny_model(job)
    chosen = ["model.layers.3.mlp.down_proj"]
    editor = build(
        FTMConfig.from_mapping({**TEST_SETTINGS, "modules": chosen}),
        model,
        tok,
        module_names=MODULES,
        seed=0,
    )
    assert editor.module_names == chosen
    before = dict(model.named_parameters())["model.layers.3.mlp.down_proj.weight"].clone()
    editor.edit_records(toy_records(1))
    assert not torch.equal(before, editor.modules[0].weight)
    with pytest.raises(ModelError, match="model.layers.9.mlp.down_proj"):
        build(
            FTMConfig.from_mapping({"modules": ["model.layers.9.mlp.down_proj"]}),
            model,
            tok,
            module_names=MODULES,
            seed=0,
        )


def test_bf16_weights_are_the_rounded_fp32_masters():
    job = tiny_job()
    job["model"]["dtype"] = "bfloat16"
    editor = _editor(job, lr=1e-4)
    editor.edit_records(toy_records(1))
    for module, master in zip(editor.modules, editor.masters, strict=True):
        assert master.dtype == torch.float32 and module.weight.dtype == torch.bfloat16
        assert torch.equal(module.weight, master.to(torch.bfloat16))
        # The master keeps what the bf16 rounding drops.
        assert not torch.equal(master, module.weight.float())


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"lr": 0}, "baselines.ft-m.lr: must be > 0"),
        ({"lr": "fast"}, "baselines.ft-m.lr: must be a number"),
        ({"steps": 0}, "baselines.ft-m.steps: must be >= 1"),
        ({"steps": 2.5}, "baselines.ft-m.steps: must be an integer"),
        ({"stop_loss": -1}, "baselines.ft-m.stop_loss: must be >= 0"),
        ({"norm_constraint": 0}, "baselines.ft-m.norm_constraint: must be > 0"),
        ({"modules": []}, "baselines.ft-m.modules"),
        ({"modules": "all"}, "baselines.ft-m.modules"),
        ({"lr_lr": 1.0}, "unknown key.*lr_lr"),
    ],
)
def test_bad_hyperparameters_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        FTMConfig.from_mapping(values)


def test_config_yaml_defaults_are_the_dataclass_defaults():
    from hiedit.config import load_config, validate_config

    config = load_config(ROOT / "config.yaml")
    validate_config(config)
    assert FTMConfig.from_mapping(config["baselines"]["ft-m"]) == FTMConfig()


class _Interrupted:
    """Delegates to an editor and raises after ``fail_after`` edits (a simulated crash)."""

    def __init__(self, editor, fail_after):
        self.editor, self.fail_after, self.calls = editor, fail_after, 0
        self.module_names = editor.module_names

    def edit_records(self, records):
        if self.calls >= self.fail_after:
            raise RuntimeError("simulated interruption")
        self.calls += 1
        return self.editor.edit_records(records)

    def save_state(self, path):
        self.editor.save_state(path)

    def load_state(self, path):
        self.editor.load_state(path)


def _stream(state_dir=None, fail_after=None):
    editor = _editor()
    wrapped = editor if fail_after is None else _Interrupted(editor, fail_after)
    settings = StreamSettings(
        n_edits=6, num_pre=2, n_curve_points=2, curve_sample=2, batch_size=4, seed=0, save_every=2
    )
    result = run_stream(
        wrapped,
        editor.model,
        editor.tokenizer,
        toy_records(6),
        settings,
        state_dir=state_dir,
        progress=False,
    )
    return result, editor


def test_interrupted_stream_resumes_to_identical_results(tmp_path):
    reference, ref_editor = _stream()
    state = tmp_path / "state"
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _stream(state, fail_after=5)
    resumed, editor = _stream(state)
    assert resumed.resumed_from == 4  # saved every 2 edits
    assert resumed.metrics == reference.metrics
    assert resumed.curve.equals(reference.curve)
    columns = metric_columns("zsre") + ["record_id", "selected"]
    assert resumed.per_edit[columns].equals(reference.per_edit[columns])
    for a, b in zip(editor.modules, ref_editor.modules, strict=True):
        assert torch.equal(a.weight, b.weight)


def test_state_of_another_configuration_is_refused(tmp_path):
    editor = _editor()
    editor.edit_records(toy_records(1))
    editor.save_state(tmp_path / "state.pt")
    other = _editor(lr=1e-3)
    with pytest.raises(CheckpointMismatchError, match="ft-m.lr"):
        other.load_state(tmp_path / "state.pt")
    same = _editor()
    same.load_state(tmp_path / "state.pt")
    for a, b in zip(same.modules, editor.modules, strict=True):
        assert torch.equal(a.weight, b.weight)
