"""UltraEdit baseline: lifelong normaliser (Chan merge), closed-form ridge update, turns, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from editor_helpers import MODULES, tiny_job, tiny_model, toy_records

import hiedit.baselines.ultraedit as ultraedit
from hiedit.baselines.ultraedit import UltraEditConfig, build, ridge_factors
from hiedit.data.tokenize import IGNORE_INDEX, encode_qa
from hiedit.errors import CheckpointMismatchError, ConfigError
from hiedit.evaluation.metrics import metric_columns
from hiedit.evaluation.stream import StreamSettings, run_stream

ROOT = Path(__file__).resolve().parents[1]
# η is 1e-6 at paper scale (‖k̂‖² ≈ 4096 there); the tiny model (d_in 32) needs a larger one.
TEST_SETTINGS = {"lr": 1e-2, "edits_per_turn": 4, "capture_batch": 2}


def _editor(job=None, **values):
    job = job or tiny_job()
    model, tok = tiny_model(job)
    settings = UltraEditConfig.from_mapping({**TEST_SETTINGS, **values})
    return build(settings, model, tok, module_names=MODULES, seed=0, stats=None)


def _answer_log_prob(editor, qa) -> float:
    batch = encode_qa(editor.tokenizer, [qa.prompt], [qa.target])
    with torch.no_grad():
        logp = editor.model(**batch.model_inputs()).logits.float().log_softmax(-1)
    positions = batch.labels != IGNORE_INDEX
    return float(logp[positions].gather(-1, batch.labels[positions][:, None]).sum())


@pytest.fixture
def recorded_rows(monkeypatch):
    """Every capture the editor takes, per module index, in order."""
    rows: dict[int, list[torch.Tensor]] = {}
    original = ultraedit.capture_gradients

    def recording(model, modules, batch, token):
        captures, loss = original(model, modules, batch, token)
        for index, cap in enumerate(captures):
            rows.setdefault(index, []).append(cap.rows.clone())
        return captures, loss

    monkeypatch.setattr(ultraedit, "capture_gradients", recording)
    return rows


def test_one_edit_raises_the_target_probability():
    editor = _editor(edits_per_turn=1)
    for record in toy_records(3):
        start = _answer_log_prob(editor, record.edit)
        step = editor.edit_records([record])
        assert _answer_log_prob(editor, record.edit) > start + 0.1
    assert step.selected == MODULES
    assert list(step.phases) == ["capture", "route", "update", "commit"]
    assert sum(step.phases.values()) == pytest.approx(step.seconds)


def test_normaliser_after_a_stream_equals_one_pass_over_all_rows(recorded_rows):
    editor = _editor()
    records = toy_records(8)
    for start, size in ((0, 3), (3, 1), (4, 4)):  # turns of unequal sizes
        editor.edit_records(records[start : start + size])
    assert editor.n_turns == 3 and editor.n_records == 8
    for key, normalizer in editor.normalizers.items():
        members = [i for i, g in enumerate(editor.groups) if g == key]
        rows = torch.cat([r for i in members for r in recorded_rows[i]]).double()
        assert int(normalizer.count) == rows.shape[0]
        torch.testing.assert_close(normalizer.mean, rows.mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(normalizer.variance(), rows.var(0), rtol=1e-8, atol=1e-14)


def test_turn_update_is_the_closed_form_on_the_raw_keys(recorded_rows):
    editor = _editor(ridge=0.5)
    records = toy_records(4)
    editor.edit_records(records[:2])  # give the normaliser a history
    before = [m.weight.detach().clone().double() for m in editor.modules]
    n_before = {i: len(r) for i, r in recorded_rows.items()}
    editor.edit_records(records[2:])
    for index, module in enumerate(editor.modules):
        group = [i for i, g in enumerate(editor.groups) if g == editor.groups[index]]
        history = torch.cat([r for i in group for r in recorded_rows[i]]).double()
        mean, std = history.mean(0), history.std(0)
        turn = torch.cat(recorded_rows[index][n_before[index] :]).double()
        d_in = module.in_features
        keys, normed = turn[:, :d_in], (turn - mean) / (std + ultraedit.NORMALIZER_EPS)
        values = -1e-2 * normed[:, :d_in].pow(2).sum(1, keepdim=True) * normed[:, d_in:]
        gram = keys.t() @ keys + 0.5 * torch.eye(d_in, dtype=torch.float64)
        expected = torch.linalg.solve(gram, keys.t() @ values).t()
        change = module.weight.double() - before[index]
        torch.testing.assert_close(change, expected, rtol=1e-4, atol=1e-7)
        assert change.abs().max() > 0


@pytest.mark.parametrize(("n", "d_in", "d_out"), [(5, 12, 7), (20, 12, 7), (20, 6, 9)])
def test_ridge_factors_equal_the_direct_solution(n, d_in, d_out):
    generator = torch.Generator().manual_seed(n + d_in)
    keys = torch.randn(n, d_in, generator=generator)
    values = torch.randn(n, d_out, generator=generator)
    a, b = ridge_factors(keys, values, 0.3)
    # The push-through form has one factor row per key row; otherwise the smaller dimension.
    assert a.shape[0] == b.shape[0] == (n if n < d_in else min(d_in, d_out))
    k, v = keys.double(), values.double()
    direct = torch.linalg.solve(k.t() @ k + 0.3 * torch.eye(d_in, dtype=k.dtype), k.t() @ v).t()
    torch.testing.assert_close((b.t() @ a).double(), direct, rtol=1e-5, atol=1e-6)


def test_capture_batch_does_not_change_a_turn():
    records = toy_records(4)
    results = []
    for capture_batch in (1, 4):
        editor = _editor(capture_batch=capture_batch)
        before = [m.weight.detach().clone() for m in editor.modules]
        editor.edit_records(records)
        results.append([m.weight - w for m, w in zip(editor.modules, before, strict=True)])
    # Equal up to the float noise of padded batches.
    for a, b in zip(*results, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max()))


def test_turn_larger_than_edits_per_turn_is_refused():
    editor = _editor(edits_per_turn=2)
    assert editor.edits_per_step == 2
    with pytest.raises(ValueError, match="edits_per_turn is 2"):
        editor.edit_records(toy_records(3))


def test_short_turns_in_a_row_are_warned_about(caplog):
    editor = _editor(edits_per_turn=4)
    editor.edit_records(toy_records(1))
    assert "edits_per_turn" not in caplog.text  # a short last turn is normal
    editor.edit_records(toy_records(1))
    assert "edits_per_turn = 4" in caplog.text


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"lr": 0}, "baselines.ultraedit.lr: must be > 0"),
        ({"ridge": -1.0}, "baselines.ultraedit.ridge: must be > 0"),
        ({"edits_per_turn": 0}, "baselines.ultraedit.edits_per_turn"),
        ({"capture_batch": 1.5}, "baselines.ultraedit.capture_batch"),
        ({"token": "last"}, "baselines.ultraedit.token"),
        ({"modules": [1, 2]}, "baselines.ultraedit.modules"),
        ({"commit_precision": "exact"}, "baselines.ultraedit.commit_precision"),
        ({"eta": 1.0}, "unknown key.*eta"),
    ],
)
def test_bad_hyperparameters_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        UltraEditConfig.from_mapping(values)


def test_config_yaml_defaults_are_the_dataclass_defaults():
    from hiedit.config import load_config, validate_config

    config = load_config(ROOT / "config.yaml")
    validate_config(config)
    assert UltraEditConfig.from_mapping(config["baselines"]["ultraedit"]) == UltraEditConfig()


class _Interrupted:
    """Delegates to an editor and raises after ``fail_after`` turns (a simulated crash)."""

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
    editor = _editor(edits_per_turn=1)  # the stream hands over one record per call
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
    for key, norm in editor.normalizers.items():
        for name, value in norm.state_dict().items():
            assert torch.equal(value, ref_editor.normalizers[key].state_dict()[name]), name


def test_state_of_another_configuration_is_refused(tmp_path):
    editor = _editor()
    editor.edit_records(toy_records(2))
    editor.save_state(tmp_path / "state.pt")
    with pytest.raises(CheckpointMismatchError, match="ultraedit.ridge"):
        _editor(ridge=2.0).load_state(tmp_path / "state.pt")
    same = _editor()
    same.load_state(tmp_path / "state.pt")
    assert same.n_turns == 1 and same.n_records == 2
    for a, b in zip(same.modules, editor.modules, strict=True):
        assert torch.equal(a.weight, b.weight)


def test_bf16_commits_keep_the_sub_ulp_mass():
    job = tiny_job()
    job["model"]["dtype"] = "bfloat16"
    editor = _editor(job, lr=1e-5)
    editor.edit_records(toy_records(2))
    named = dict(zip(editor.module_names, [m.weight for m in editor.modules], strict=True))
    buffers = editor.precision.state_dict(named)["buffers"]
    # Every bf16 weight carries an fp32 compensation of what its rounding dropped.
    assert set(buffers) == set(MODULES)
    assert all(b["buffer"].dtype == torch.float32 for b in buffers.values())
    assert any(b["buffer"].abs().max() > 0 for b in buffers.values())
