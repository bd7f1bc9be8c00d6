"""MEMIT as a sequential editor: efficacy of one edit, the closed form, resume, config errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from editor_helpers import toy_records
from test_baselines_key_stats import DOWN_PROJ, fresh_model, target_logprob, tiny_stats

from hiedit.baselines.alphaedit import AlphaEditConfig
from hiedit.baselines.key_stats import KeyStatsConfig
from hiedit.baselines.locate import keys_and_outputs, optimise_target, subject_last_index
from hiedit.baselines.memit import MEMITConfig, build
from hiedit.data.records import QA, EditRecord
from hiedit.editor.prefix import PrefixCache
from hiedit.errors import CheckpointMismatchError, ConfigError, ModelError
from hiedit.evaluation.stream import StreamSettings, run_stream
from hiedit.phases import EDIT_PHASES

# The tiny model's activations are small and its predictions weak: a larger step, a wider
# clamp and a small λ let one edit visibly move it (the defaults are Llama-3-8B's).
TINY_SETTINGS = {"v_lr": 0.5, "clamp_norm_factor": 4.0, "mom2_update_weight": 1.0}


def memit(model, tokenizer, modules=DOWN_PROJ, seed=0, **values):
    settings = MEMITConfig.from_mapping({**TINY_SETTINGS, **values})
    return build(
        settings, model, tokenizer, module_names=list(modules), seed=seed, stats=tiny_stats()
    )


def test_one_edit_raises_the_target_probability():
    model, tokenizer = fresh_model()
    record = toy_records(1)[0]
    before = target_logprob(model, tokenizer, record)
    untouched = model.model.layers[3].mlp.down_proj.weight.detach().clone()
    editor = memit(model, tokenizer)
    step = editor.edit_records([record])
    after = target_logprob(model, tokenizer, record)
    assert after > before + 0.02, (before, after)
    assert step.selected == DOWN_PROJ
    assert set(step.phases) <= set(EDIT_PHASES) and step.seconds > 0
    assert editor.fallbacks == 0 and editor.last_targets[0].subject_found
    assert torch.equal(model.model.layers[3].mlp.down_proj.weight, untouched)


def test_single_layer_single_edit_matches_the_closed_form():
    model, tokenizer = fresh_model()
    record = toy_records(2)[1]
    editor = memit(model, tokenizer, modules=DOWN_PROJ[1:2], mom2_update_weight=3.0)
    module = editor.modules[0]
    before = module.weight.detach().double().clone()
    keys, outputs = keys_and_outputs(
        model, tokenizer, [record], editor.prefixes, module, editor.z_layer
    )
    editor.edit_records([record])
    delta = module.weight.detach().double() - before
    residual = editor.last_targets[0].z.double() - outputs[0]
    key = keys[0]
    moment = tiny_stats().second_moments[DOWN_PROJ[1]].double()
    # ΔW = r kᵀ (λ C + k kᵀ)⁻¹ with one key: the minimiser of ‖ΔW k − r‖² + λ tr(ΔW C ΔWᵀ).
    expected = torch.outer(residual, key) @ torch.linalg.inv(3.0 * moment + torch.outer(key, key))
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    # Normal equations of that objective.
    system = 3.0 * moment + torch.outer(key, key)
    torch.testing.assert_close(
        delta @ system,
        torch.outer(residual, key),
        rtol=1e-3,
        atol=1e-4 * float(residual.abs().max()),
    )


def test_target_optimisation_reusing_the_lower_layers_matches_the_whole_decoder():
    model, tokenizer = fresh_model()
    editor = memit(model, tokenizer)
    # the cached path is taken: layers below the last edited one exist and the model is a Llama
    assert PrefixCache(model, [editor.z_layer]).first == 2  # DOWN_PROJ: layers 0, 1, 2
    for record in toy_records(3):
        targets = [
            optimise_target(
                model,
                tokenizer,
                record,
                editor.z_layer,
                editor.prefixes,
                editor.settings,
                reuse_lower_layers=reuse,
            )
            for reuse in (True, False)
        ]
        cached, whole = targets
        assert cached.steps == whole.steps > 0
        torch.testing.assert_close(cached.h, whole.h, rtol=0, atol=0)
        torch.testing.assert_close(cached.z, whole.z, rtol=1e-5, atol=1e-6)
        assert cached.nll == pytest.approx(whole.nll, rel=1e-5)
        assert not torch.equal(cached.z, cached.h)  # the optimisation moved the target


def test_subject_position_and_fallback():
    _, tokenizer = fresh_model()
    prompt = "What is the capital of France?"
    # Byte tokenizer: BOS, then one token per character.
    assert subject_last_index(tokenizer, prompt, "France") == (prompt.index("France") + 6, True)
    assert subject_last_index(tokenizer, "Paris in Paris", "Paris") == (14, True)
    assert subject_last_index(tokenizer, prompt, "Peru") == (len(prompt), False)
    assert subject_last_index(tokenizer, prompt, "") == (len(prompt), False)


def test_record_without_subject_in_prompt_falls_back_to_the_last_token():
    model, tokenizer = fresh_model()
    record = dataclasses.replace(toy_records(1)[0], subject="Atlantis")
    editor = memit(model, tokenizer, v_num_grad_steps=3)
    editor.edit_records([record])
    assert editor.fallbacks == 1 and not editor.last_targets[0].subject_found
    empty = dataclasses.replace(record, subject="")
    editor.edit_records([empty])  # no "is a" prompt, no KL term
    assert editor.fallbacks == 2


class Interrupted(RuntimeError):
    pass


class Crashing:
    """Wraps an editor and raises on the n-th edit (a killed job)."""

    def __init__(self, editor, fail_at: int):
        self.editor, self.fail_at, self.calls = editor, fail_at, 0
        self.module_names = editor.module_names

    def edit_records(self, records):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted
        return self.editor.edit_records(records)

    def save_state(self, path):
        self.editor.save_state(path)

    def load_state(self, path):
        self.editor.load_state(path)


def stream_records(n: int) -> list[EditRecord]:
    records = toy_records(n)
    return [dataclasses.replace(r, record_id=f"toy-{i}") for i, r in enumerate(records)]


def resume_check(make_editor, tmp_path):
    """Uninterrupted vs interrupted-then-resumed streams: same metrics, per-edit rows, weights."""
    records = stream_records(5)
    settings = StreamSettings(
        n_edits=5, num_pre=2, n_curve_points=2, curve_sample=2, batch_size=4, seed=0, save_every=1
    )
    model, tokenizer = fresh_model()
    editor = make_editor(model, tokenizer)
    whole = run_stream(editor, model, tokenizer, records, settings, progress=False)
    weights = [m.weight.detach().clone() for m in editor.modules]

    model, tokenizer = fresh_model()
    state = tmp_path / "state"
    with pytest.raises(Interrupted):
        run_stream(
            Crashing(make_editor(model, tokenizer), 4),
            model,
            tokenizer,
            records,
            settings,
            state_dir=state,
            progress=False,
        )
    model, tokenizer = fresh_model()
    editor = make_editor(model, tokenizer)
    resumed = run_stream(
        editor, model, tokenizer, records, settings, state_dir=state, progress=False
    )
    assert resumed.resumed_from == 3
    assert resumed.metrics == whole.metrics
    # Wall times and resident memory are measurements, not results.
    columns = [c for c in whole.per_edit.columns if "seconds" not in c and "rss" not in c]
    assert resumed.per_edit[columns].equals(whole.per_edit[columns])
    for got, expected in zip(editor.modules, weights, strict=True):
        assert torch.equal(got.weight, expected)
    return editor


def test_stream_resumes_with_identical_results(tmp_path):
    resume_check(memit, tmp_path)


def test_state_from_another_configuration_is_refused(tmp_path):
    model, tokenizer = fresh_model()
    editor = memit(model, tokenizer, v_num_grad_steps=2)
    editor.edit_records(toy_records(1))
    editor.save_state(tmp_path / "memit.pt")
    other = memit(*fresh_model(), v_num_grad_steps=3)
    with pytest.raises(CheckpointMismatchError, match="settings"):
        other.load_state(tmp_path / "memit.pt")
    moved = memit(*fresh_model(), modules=DOWN_PROJ[:2], v_num_grad_steps=2)
    with pytest.raises(CheckpointMismatchError, match="module_names"):
        moved.load_state(tmp_path / "memit.pt")
    same = memit(*fresh_model(), v_num_grad_steps=2)
    same.load_state(tmp_path / "memit.pt")
    assert same.step == 1 and torch.equal(same.modules[0].weight, editor.modules[0].weight)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"v_lr": 0}, "baselines.memit.v_lr: must be > 0"),
        ({"mom2_update_weight": -1}, "baselines.memit.mom2_update_weight: must be >= 0"),
        ({"v_num_grad_steps": 0}, "baselines.memit.v_num_grad_steps: must be >= 1"),
        ({"kl_factor": "a lot"}, "baselines.memit.kl_factor: must be a number"),
        ({"clamp_norm_factor": float("inf")}, "baselines.memit.clamp_norm_factor: must be finite"),
        ({"layers": {"llama3-8b": []}}, "baselines.memit.layers.llama3-8b: must be a non-empty"),
        ({"layers": {"llama3-8b": [4, 4]}}, "baselines.memit.layers.llama3-8b: a layer is listed"),
        ({"layers": {"llama3-8b": [-1]}}, "baselines.memit.layers.llama3-8b: layer indices"),
        ({"module_template": "model.mlp"}, "baselines.memit.module_template: must contain"),
        ({"lr": 1.0}, "baselines.memit.lr: unknown key"),
    ],
)
def test_bad_hyperparameters_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        MEMITConfig.from_mapping(values)


def test_setup_errors_name_what_is_wrong():
    settings = MEMITConfig.from_mapping({"layers": {"tiny-llama": [0, 1]}})
    assert settings.module_names("tiny-llama", "baselines.memit") == DOWN_PROJ[:2]
    with pytest.raises(ConfigError, match="baselines.memit.layers: no layers for model 'gpt2'"):
        settings.module_names("gpt2", "baselines.memit")
    model, tokenizer = fresh_model()
    with pytest.raises(ConfigError, match="needs the fitted key statistic"):
        build(settings, model, tokenizer, module_names=DOWN_PROJ, seed=0, stats=None)
    with pytest.raises(ConfigError, match="model's last decoder layer"):
        memit(model, tokenizer, modules=["model.layers.3.mlp.down_proj"])
    with pytest.raises(ModelError, match="residual stream"):
        memit(model, tokenizer, modules=["model.layers.1.mlp.up_proj"])
    with pytest.raises(ModelError, match="model.layers.9.mlp.down_proj"):
        memit(model, tokenizer, modules=["model.layers.9.mlp.down_proj"])


def test_batch_of_records_in_one_step():
    model, tokenizer = fresh_model()
    records = [
        toy_records(3)[0],
        EditRecord(
            "b",
            "Japan",
            "capital",
            "zsre",
            QA("What is the capital of Japan?", "Oslo"),
            QA("Which city is the capital of Japan?", "Oslo"),
            QA("2+2?", "4"),
        ),
    ]
    before = [target_logprob(model, tokenizer, r) for r in records]
    editor = memit(model, tokenizer)
    editor.edit_records(records)
    after = [target_logprob(model, tokenizer, r) for r in records]
    # Both targets are solved jointly (one least-squares problem with two keys per layer); on
    # this tiny model the two prompts' keys are close, so only the batch as a whole must gain.
    assert len(editor.last_targets) == 2
    assert sum(after) > sum(before) + 0.05, (before, after)


ROOT = Path(__file__).resolve().parents[1]


def test_config_yaml_sections_are_the_dataclass_defaults():
    from hiedit.config import load_config, validate_config

    config = load_config(ROOT / "config.yaml")
    validate_config(config)
    memit_cfg = MEMITConfig.from_mapping(config["baselines"]["memit"])
    assert dataclasses.replace(memit_cfg, layers={}) == MEMITConfig()
    assert memit_cfg.layers["llama3-8b"] == (4, 5, 6, 7, 8)
    alpha = AlphaEditConfig.from_mapping(config["baselines"]["alphaedit"], "baselines.alphaedit")
    assert dataclasses.replace(alpha, layers={}) == AlphaEditConfig()
    assert alpha.layers == memit_cfg.layers
    assert KeyStatsConfig.from_mapping(config["baselines"]["key_stats"]) == KeyStatsConfig()


@pytest.mark.parametrize("variant", ["memit", "alphaedit"])
def test_registered_variant_runs_through_evaluate_with_its_statistic(variant, tmp_path):
    """The registry's entry, the job's section, fit-stats and evaluate --stats, end to end."""
    from hiedit.cli import main
    from hiedit.config import job_config, load_config, resolve_setup
    from hiedit.data import write_split
    from hiedit.registry import get

    assert get(variant).stats == "key_stats" and get(variant).builder.endswith(variant)
    config = load_config(ROOT / "config.yaml")
    resolved = resolve_setup(config, "smoke")
    job = job_config(config, resolved, "tiny-llama", "geofacts-zsre", variant, 0)
    job["evaluation"].update(n_edits=3, num_pre=2, n_curve_points=1, curve_sample=2)
    job["baselines"][variant].update(v_num_grad_steps=3, n_prefixes=2)
    # The section as written, without the smoke setup's search (tests/test_baselines_tuning.py).
    job["baselines"][variant].pop("search", None)
    (tmp_path / "job.json").write_text(json.dumps(job))
    stats_job = {
        "model_name": "tiny-llama",
        "model": config["models"]["tiny-llama"],
        "baselines": {
            "key_stats": {"source": "pydoc-topics", "n_samples": 60, "max_length": 64},
            variant: job["baselines"][variant],
        },
    }
    (tmp_path / "stats.json").write_text(json.dumps(stats_job))
    stats = tmp_path / "stats" / "key_stats.pt"
    assert (
        main(
            [
                "baselines",
                "fit-stats",
                "--run-config",
                str(tmp_path / "stats.json"),
                "--out",
                str(stats),
                "--no-progress",
            ]
        )
        == 0
    )
    write_split(stream_records(4), tmp_path / "eval.parquet")
    out = tmp_path / "out"
    args = [
        "evaluate",
        "--run-config",
        str(tmp_path / "job.json"),
        "--eval-data",
        str(tmp_path / "eval.parquet"),
        "--untrained",
        "--out-dir",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 2  # without its statistic the variant is refused
    assert main([*args, "--stats", str(stats)]) == 0
    per_edit = pd.read_csv(out / "per_edit.csv")
    assert (
        list(per_edit["selected"])
        == ["model.layers.1.mlp.down_proj;model.layers.2.mlp.down_proj"] * 3
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_edits"] == 3
