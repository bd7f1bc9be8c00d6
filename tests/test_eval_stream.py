"""The sequential stream on a tiny random Llama with a test-double editor: cost, retention, curves, resume."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import pytest
import torch

from hiedit.data import QA, EditRecord
from hiedit.errors import CheckpointMismatchError
from hiedit.evaluation.metrics import metric_columns
from hiedit.evaluation.stream import (
    StreamSettings,
    curve_checkpoints,
    curve_sample_indices,
    read_saved_progress,
    run_edits_only,
    run_stream,
    whole_stream_sample,
)
from hiedit.models import load_model

TINY = {
    "source": "random",
    "dtype": "float32",
    "init_seed": 0,
    "architecture": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
    },
    "modules": [
        "model.layers.1.mlp.gate_proj",
        "model.layers.2.mlp.gate_proj",
        "model.layers.2.mlp.up_proj",
        "model.layers.3.mlp.up_proj",
    ],
}


@dataclass
class FakeStep:
    selected: list[str]
    seconds: float


class RankOneTestEditor:
    """TEST DOUBLE for ``hiedit.editor.HiEditor`` (same interface, no learning).

    Each edit adds a fixed rank-1 update (seeded by the record id) to a K-subset of the modules
    drawn from the *global* torch generator, like the ``hiedit-rand`` variant, so that a resume
    is exact only if the stream restores the generator state. ``fail_after`` simulates a crash.
    """

    def __init__(self, model, module_names, k: int = 2, fail_after: int | None = None):
        self.module_names = list(module_names)
        self._modules = dict(model.named_modules())
        self.k = k
        self.fail_after = fail_after
        self.n_done = 0

    def edit_records(self, records):
        if self.fail_after is not None and self.n_done >= self.fail_after:
            raise RuntimeError("simulated interruption")
        order = torch.randperm(len(self.module_names))[: self.k].tolist()
        selected = [self.module_names[i] for i in sorted(order)]
        generator = torch.Generator().manual_seed(zlib.crc32(records[0].record_id.encode()))
        with torch.no_grad():
            for name in selected:
                weight = self._modules[name].weight
                u = torch.randn(weight.shape[1], generator=generator)
                v = torch.randn(weight.shape[0], generator=generator)
                weight.add_(0.05 * torch.outer(v, u))
        self.n_done += 1
        return FakeStep(selected, 0.001)

    def save_state(self, path):
        weights = {n: self._modules[n].weight.detach().clone() for n in self.module_names}
        torch.save({"weights": weights, "n_done": self.n_done}, path)

    def load_state(self, path):
        state = torch.load(path, weights_only=True)
        with torch.no_grad():
            for name, weight in state["weights"].items():
                self._modules[name].weight.copy_(weight)
        self.n_done = state["n_done"]


def _records(n: int) -> list[EditRecord]:
    return [
        EditRecord(
            f"r{i}",
            f"City{i}",
            "P17",
            "zsre",
            QA(f"Which country is City{i} in?", f"Land{i % 5}"),
            QA(f"City{i} is a city in which country?", f"Land{i % 5}"),
            QA(f"nq question: who wrote book {i}?", f"Author {i % 3}"),
        )
        for i in range(n)
    ]


def _settings(**overrides) -> StreamSettings:
    values = dict(
        n_edits=10, num_pre=4, n_curve_points=3, curve_sample=4, batch_size=8, seed=0, save_every=2
    )
    values.update(overrides)
    return StreamSettings(**values)


def _run(records, settings, *, state_dir=None, fail_after=None):
    torch.manual_seed(settings.seed)  # per run, as the CLI does
    model, tokenizer = load_model(TINY)
    editor = RankOneTestEditor(model, TINY["modules"], fail_after=fail_after)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    result = run_stream(
        editor, model, tokenizer, records, settings, state_dir=state_dir, progress=False
    )
    return result, len(calls)


def test_checkpoints_and_samples():
    assert curve_checkpoints(10, 3) == [4, 7, 10]
    assert curve_checkpoints(2, 5) == [1, 2]
    assert curve_checkpoints(12, 4) == [3, 6, 9, 12]
    sample = curve_sample_indices(7, 4, seed=0)
    assert sample == curve_sample_indices(7, 4, seed=0)
    assert len(sample) == 4 and len(set(sample)) == 4 and max(sample) < 7
    assert curve_sample_indices(3, 4, seed=0) == [0, 1, 2]


def test_stream_cost_retention_and_curves():
    records = _records(12)
    settings = _settings()
    result, n_calls = _run(records, settings)
    total, batch = 10, settings.batch_size
    assert result.n_edits == total
    # unedited + final scoring of every record, plus the intermediate curve samples: O(T).
    curve_forwards = sum(math.ceil(3 * min(4, t) / batch) for t in (4, 7))
    expected = 2 * math.ceil(3 * total / batch) + curve_forwards
    assert n_calls == expected == result.n_forwards

    per_edit = result.per_edit
    assert per_edit["index"].tolist() == list(range(total))
    assert per_edit["record_id"].tolist() == [r.record_id for r in records[:total]]
    assert all(len(s.split(";")) == 2 for s in per_edit["selected"])
    for name in ("efficacy", "generalization", "specificity"):
        assert result.metrics[name] == pytest.approx(per_edit[name].mean())
        assert result.metrics[f"retention_{name}"] == pytest.approx(per_edit[name][:4].mean())
        assert result.metrics[f"unedited_{name}"] == pytest.approx(
            per_edit[f"unedited_{name}"].mean()
        )
        assert 0.0 <= result.metrics[name] <= 1.0
    assert "unedited_specificity_agreement" not in result.metrics
    # the edits moved the model: the unrel predictions no longer all agree with the unedited ones
    assert result.metrics["specificity_agreement"] < 1.0

    curve = result.curve
    assert list(curve.columns) == ["n_edits", "n_scored", *metric_columns("zsre")]
    assert curve["n_edits"].tolist() == [4, 7, 10]
    assert curve["n_scored"].tolist() == [4, 4, 4]
    final_sample = curve_sample_indices(10, 4, seed=0)
    assert curve["efficacy"].iloc[-1] == pytest.approx(per_edit["efficacy"][final_sample].mean())


def test_num_pre_is_scaled_to_a_short_stream():
    result, _ = _run(_records(3), _settings(n_edits=50, num_pre=100, n_curve_points=2))
    assert result.n_edits == 3 and result.num_pre == 3
    assert result.metrics["retention_efficacy"] == pytest.approx(result.metrics["efficacy"])
    assert result.curve["n_edits"].tolist() == [2, 3]


def test_a_final_sample_scores_only_what_the_numbers_need():
    records = _records(30)
    full_settings = _settings(n_edits=30, num_pre=4, n_curve_points=3, curve_sample=4)
    full, _ = _run(records, full_settings)
    sampled_settings = _settings(
        n_edits=30, num_pre=4, n_curve_points=3, curve_sample=4, final_sample=6
    )
    sampled, n_calls = _run(records, sampled_settings)
    assert n_calls == sampled.n_forwards < full.n_forwards

    whole = whole_stream_sample(30, 6, seed=0)
    assert len(whole) == 6 and whole == whole_stream_sample(30, 6, seed=0)
    needed = set(whole) | set(range(4))
    for point in (10, 20, 30):
        needed |= set(curve_sample_indices(point, 4, seed=0))
    columns = metric_columns("zsre")
    per_edit, reference = sampled.per_edit, full.per_edit
    scored = per_edit["efficacy"].notna()
    assert set(per_edit.index[scored]) == needed and len(needed) < 30
    # the edits are those of the full run, so every scored value is the full run's
    assert per_edit.loc[scored, columns].equals(reference.loc[scored, columns])
    assert per_edit["whole_stream_sample"].tolist() == [i in whole for i in range(30)]
    # the curve and retention are exactly a full run's; the whole-stream metrics are over the sample
    assert sampled.curve.equals(full.curve)
    for name in ("efficacy", "generalization", "specificity"):
        assert sampled.metrics[f"retention_{name}"] == full.metrics[f"retention_{name}"]
        assert sampled.metrics[name] == pytest.approx(reference[name][whole].mean())
        assert sampled.metrics[f"unedited_{name}"] == pytest.approx(
            reference[f"unedited_{name}"][whole].mean()
        )
    assert sampled.whole_stream_scored == 6 and full.whole_stream_scored == 30


def test_a_sampled_stream_resumes_to_identical_metrics(tmp_path):
    records = _records(12)
    settings = _settings(n_edits=12, final_sample=3)
    reference, _ = _run(records, settings)
    state = tmp_path / "state"
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _run(records, settings, state_dir=state, fail_after=5)
    resumed, _ = _run(records, settings, state_dir=state)
    assert resumed.resumed_from == 4
    assert resumed.metrics == reference.metrics
    assert resumed.curve.equals(reference.curve)
    columns = metric_columns("zsre") + ["whole_stream_sample"]
    assert resumed.per_edit[columns].equals(reference.per_edit[columns])


def test_interrupted_stream_resumes_to_identical_metrics(tmp_path):
    records = _records(10)
    settings = _settings()
    reference, _ = _run(records, settings)

    state = tmp_path / "state"
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _run(records, settings, state_dir=state, fail_after=5)
    assert (state / "progress.pt").is_file()
    assert [p.name for p in state.glob("editor-*.pt")] == ["editor-00000004.pt"]

    resumed, n_calls = _run(records, settings, state_dir=state)
    assert resumed.resumed_from == 4
    assert resumed.metrics == reference.metrics
    assert resumed.curve.equals(reference.curve)
    metric_cols = metric_columns("zsre") + ["selected", "record_id"]
    assert resumed.per_edit[metric_cols].equals(reference.per_edit[metric_cols])
    # the resumed run did not score the unedited model again
    assert n_calls < reference.n_forwards


def test_an_interrupted_streams_progress_can_be_read_and_exported(tmp_path):
    import json

    import pandas as pd

    from hiedit.cli import main

    records = _records(10)
    settings = _settings()
    reference, _ = _run(records, settings)
    state = tmp_path / "state"
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _run(records, settings, state_dir=state, fail_after=9)
    saved_files = sorted(p.name for p in state.iterdir())

    progress = read_saved_progress(state)
    # saves every 2 edits: the last one after edit 8; checkpoint 4 and 7 were scored by then
    assert (progress.done, progress.total) == (8, 10)
    assert progress.per_edit["index"].tolist() == list(range(8))
    log_columns = ["record_id", "selected", "n_selected"]
    assert progress.per_edit[log_columns].equals(reference.per_edit[log_columns].iloc[:8])
    # the same points (a metric undefined at every point so far, here agreement on the positions
    # the unedited model predicts correctly, is absent rather than an empty column)
    assert set(progress.curve.columns) <= set(reference.curve.columns)
    assert progress.curve.equals(reference.curve.iloc[:2][progress.curve.columns])

    out = tmp_path / "partial" / "tiny" / "zsre" / "fake" / "seed0"
    assert main(["evaluate", "progress", str(state), "--out-dir", str(out)]) == 0
    summary = json.loads((out / "progress.json").read_text())
    assert (summary["done"], summary["total"], summary["curve_points"]) == (8, 10, 2)
    exported = pd.read_csv(out / "curve.csv")
    assert exported["n_edits"].tolist() == [4, 7]
    assert exported["efficacy"].tolist() == pytest.approx(reference.curve["efficacy"][:2].tolist())
    assert len(pd.read_csv(out / "per_edit.csv")) == 8
    assert sorted(p.name for p in state.iterdir()) == saved_files  # the state is untouched


def test_reading_progress_without_a_saved_state_names_the_file(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="progress.pt: no saved stream progress"):
        read_saved_progress(tmp_path)


def test_state_of_other_inputs_is_refused(tmp_path):
    records = _records(10)
    state = tmp_path / "state"
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _run(records, _settings(), state_dir=state, fail_after=3)
    with pytest.raises(CheckpointMismatchError, match="n_curve_points"):
        _run(records, _settings(n_curve_points=2), state_dir=state)


def test_a_zero_step_editor_keeps_agreement_one_and_kl_zero_exactly():
    from editor_helpers import tiny_job, tiny_model

    from hiedit.editor import load_editor

    job = tiny_job(editor={"lr": 0.0})
    model, tokenizer = tiny_model(job)
    editor = load_editor(job, model, tokenizer, None)
    result = run_stream(editor, model, tokenizer, _records(6), _settings(n_edits=6), progress=False)
    assert result.metrics["specificity_agreement"] == 1.0
    assert result.metrics["specificity_kl"] == 0.0
    assert result.metrics.get("specificity_agreement_correct", 1.0) == 1.0
    assert (result.per_edit["specificity_kl"] == 0.0).all()
    for name in ("efficacy", "generalization", "specificity"):
        assert result.metrics[name] == result.metrics[f"unedited_{name}"]


class TurnEditor(RankOneTestEditor):
    """The test double with turns: three records per call."""

    edits_per_step = 3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def edit_records(self, records):
        self.calls.append([r.record_id for r in records])
        return super().edit_records(records[-1:])


def test_turns_of_several_records_per_call_keep_one_row_per_record(tmp_path):
    model, tokenizer = load_model(TINY)
    editor = TurnEditor(model, TINY["modules"])
    settings = _settings(n_edits=8, n_curve_points=2)
    result = run_stream(editor, model, tokenizer, _records(8), settings, progress=False)
    assert [len(c) for c in editor.calls] == [3, 3, 2]
    assert result.per_edit["index"].tolist() == list(range(8))
    assert result.per_edit["turn"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    # the first curve point (checkpoint 4) falls on the call boundary after it: 6 edits
    assert result.curve["n_edits"].tolist() == [6, 8]


def test_edits_only_makes_the_streams_edits_without_scoring():
    records, settings = _records(6), _settings(n_edits=6, n_curve_points=0, save_every=0)
    torch.manual_seed(0)
    model, tokenizer = load_model(TINY)
    editor = RankOneTestEditor(model, TINY["modules"])
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    per_edit = run_edits_only(editor, model, tokenizer, records, settings, progress=False)
    assert not calls  # nothing scored (this editor edits without a forward)
    full, _ = _run(records, settings)
    columns = ["index", "record_id", "turn", "selected", "n_selected"]
    assert per_edit[columns].equals(full.per_edit[columns])
    assert (per_edit["wall_seconds"] > 0).all() and (per_edit["rss_mib"] > 0).all()
    with pytest.raises(ValueError, match="n_curve_points"):
        run_edits_only(editor, model, tokenizer, records, _settings(n_edits=6), progress=False)
