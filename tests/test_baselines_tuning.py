"""The grid search of baseline hyperparameters on the validation slice (hiedit/baselines/tuning.py):
the grid, its checks, what the search edits, what it chooses, and the evaluation that uses it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from editor_helpers import tiny_job, tiny_model, toy_records

import hiedit.editor.validation as validation_module
import hiedit.editors as editors_module
from hiedit import registry
from hiedit.baselines.tuning import (
    MAX_COMBINATIONS,
    combinations,
    grid_search,
    tuned_section,
)
from hiedit.cli import main
from hiedit.config import (
    JobConfig,
    baseline_section,
    job_config,
    load_config,
    resolve_setup,
    validate_config,
)
from hiedit.data import write_split
from hiedit.editor.validation import split_validation, validation_score
from hiedit.editors import build_editor
from hiedit.errors import CheckpointMismatchError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
LOCATE_KEYS = ["layers", "mom2_update_weight", "v_num_grad_steps", "n_prefixes"]


# --- the grid -----------------------------------------------------------------------------------


def test_combinations_are_the_product_in_the_order_written():
    section = {
        "layers": {"tiny-llama": [1, 2], "other": [5]},
        "mom2_update_weight": 15000.0,
        "search": {
            "mom2_update_weight": [10.0, 100.0],
            "layers": [[0, 1], [1, 2]],
            "target": [{"v_num_grad_steps": 25, "n_prefixes": 5}, {"v_num_grad_steps": 10}],
        },
    }
    found = combinations(
        section, known=LOCATE_KEYS, where="baselines.memit", model_name="tiny-llama"
    )
    assert len(found) == 8 and [c.index for c in found] == list(range(8))
    first, last = found[0], found[-1]
    assert first.values == {
        "mom2_update_weight": 10.0,
        "layers": [0, 1],
        "target": {"v_num_grad_steps": 25, "n_prefixes": 5},
    }
    # A layer list is the job's model's entry of the table; the other models keep theirs.
    assert first.section["layers"] == {"tiny-llama": [0, 1], "other": [5]}
    assert first.section["v_num_grad_steps"] == 25 and first.section["n_prefixes"] == 5
    assert "search" not in first.section
    assert last.section["mom2_update_weight"] == 100.0 and last.section["v_num_grad_steps"] == 10
    assert "n_prefixes" not in last.section  # a group sets only its own keys
    base = {k: v for k, v in section.items() if k != "search"}
    # Only what differs from the section: [1, 2] is already the model's layer list.
    assert last.assigned(base) == {"mom2_update_weight": 100.0, "v_num_grad_steps": 10}
    assert combinations({"lr": 1.0}, known=["lr"], where="x") == []


def test_assigned_values_are_those_that_differ_from_the_section():
    section = {"lr": 1.0, "steps": 3, "search": {"lr": [1.0, 2.0]}}
    found = combinations(section, known=["lr", "steps"], where="baselines.ft-m")
    base = {"lr": 1.0, "steps": 3}
    assert [c.assigned(base) for c in found] == [{}, {"lr": 2.0}]


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"lr": []}, r"baselines\.ft-m\.search\.lr: must be a non-empty list"),
        ({"lr": 0.1}, r"baselines\.ft-m\.search\.lr: must be a non-empty list"),
        ({"speed": [1, 2]}, r"baselines\.ft-m\.search\.speed\[0\]: 'speed' is not a key"),
        ({"g": [{"speed": 1}]}, r"baselines\.ft-m\.search\.g\[0\]\.speed: not a key"),
        (
            {"lr": list(range(1, 9)), "steps": list(range(1, 10))},
            rf"baselines\.ft-m\.search: 8 \(lr\) × 9 \(steps\) = 72 combinations, more than "
            rf"the {MAX_COMBINATIONS}",
        ),
    ],
)
def test_bad_grids_name_the_key(search, message):
    with pytest.raises(ConfigError, match=message):
        combinations(
            {"lr": 1.0, "steps": 3, "search": search}, known=["lr", "steps"], where="baselines.ft-m"
        )


def test_a_group_may_not_vary_what_the_variant_fixes():
    section = {"lr": 1.0, "edits_per_turn": 1, "search": {"g": [{"edits_per_turn": 5}]}}
    with pytest.raises(ConfigError, match=r"search\.g\[0\]: sets edits_per_turn, which"):
        combinations(
            section,
            known=["lr", "edits_per_turn"],
            where="baselines.ultraedit",
            fixed={"edits_per_turn": 1},
        )


def _config_with(setup_baselines):
    config = load_config(ROOT / "config.yaml")
    config["setups"]["smoke"]["overrides"]["baselines"] = setup_baselines
    return config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"ft-m": {"search": {"lr": [1.0e-3, -1.0]}}},
            r"setups\.smoke\.overrides\.baselines\.ft-m\.search\.lr\[1\]: .*ft-m\.lr': -1\.0 is",
        ),
        (
            {"memit": {"search": {"layers": [[1, 2], [1, 1]]}}},
            r"baselines\.memit\.search\.layers\[1\].*non-unique",
        ),
        (
            {"memit": {"search": {"mom2_update_weight": "big"}}},
            r"search\.mom2_update_weight.*array",
        ),
        (
            {"alphaedit": {"search": {"speed": [1]}}},
            r"baselines\.alphaedit\.search\.speed\[0\]: 'speed' is not a key",
        ),
    ],
)
def test_bad_search_in_config_yaml_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_config_with(overrides))


def test_config_yaml_and_its_setups_validate():
    config = load_config(ROOT / "config.yaml")
    validate_config(config)
    smoke = resolve_setup(config, "smoke")
    for name in ("ft-m", "ultraedit", "ultraedit-1", "memit", "alphaedit"):
        assert name in smoke["variants"]
        assert registry.get(name).fit_under(smoke["baselines"]) == "grid_search"
    paper = resolve_setup(config, "paper")
    for name in ("ft-m", "ultraedit", "ultraedit-1", "memit", "alphaedit"):
        assert name in paper["variants"]
        # Published values: nothing is searched, nothing is fitted.
        assert registry.get(name).fit_under(paper["baselines"]) is None
        assert registry.get(name).checkpoint_under(paper["baselines"]) is None


def test_variant_fixed_keys_are_dropped_from_its_grid():
    baselines = {"ultraedit": {"lr": 1e-6, "search": {"edits_per_turn": [10, 100]}}}
    assert baseline_section("ultraedit", baselines)["ultraedit"]["search"] == {
        "edits_per_turn": [10, 100]
    }
    one = baseline_section("ultraedit-1", baselines)["ultraedit"]
    assert one["edits_per_turn"] == 1 and "search" not in one
    assert registry.get("ultraedit-1").fit_under(baselines) is None
    assert registry.get("ultraedit").fit_under(baselines) == "grid_search"
    assert registry.get("ultraedit").checkpoint_under(baselines) == "ultraedit"
    assert registry.get("hiedit-rand").checkpoint_under(baselines) == "hiedit"


# --- the search ---------------------------------------------------------------------------------


def ftm_job(search, **section):
    job = tiny_job("ft-m", training={"validation_size": 4, "validation_edits": 3})
    job["baselines"] = {
        "ft-m": {"lr": 1e-2, "steps": 3, "stop_loss": 0.0, **section, "search": search}
    }
    return JobConfig.from_dict(job)


def train_records():
    # Two records per subject: the validation slice holds whole subjects.
    return toy_records(16)


class Recorder:
    """Wraps a baseline editor and records the ids of every record it is asked to edit."""

    def __init__(self, editor, seen):
        self.editor, self.seen = editor, seen
        self.module_names = editor.module_names
        self.edits_per_step = getattr(editor, "edits_per_step", 1)

    def edit_records(self, records):
        self.seen[-1].extend(r.record_id for r in records)
        return self.editor.edit_records(records)

    def save_state(self, path):
        self.editor.save_state(path)

    def load_state(self, path):
        self.editor.load_state(path)


@pytest.fixture
def recorded(monkeypatch):
    """Every candidate's edited record ids (one list per built editor)."""
    seen: list[list[str]] = []
    build = editors_module.build_baseline

    def recording(*args, **kwargs):
        seen.append([])
        return Recorder(build(*args, **kwargs), seen)

    monkeypatch.setattr(editors_module, "build_baseline", recording)
    return seen


def test_search_edits_only_the_validation_slice_and_restores_the_weights(tmp_path, recorded):
    job = ftm_job({"lr": [1e-3, 1e-2, 3e-2]})
    model, tokenizer = tiny_model(job.to_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = train_records()
    train, held_out = split_validation(records, 4)
    result = grid_search(job, model, tokenizer, records, tmp_path / "editor.pt")
    expected = [r.record_id for r in held_out[:3]]
    assert len(recorded) == 3
    assert all(ids == expected for ids in recorded)  # every candidate: the same slice, in order
    assert not set(expected) & {r.record_id for r in train}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(result.rows) == 3


def test_chosen_values_are_the_best_scoring_combination(tmp_path, monkeypatch):
    # Scores known in advance: the search must pick lr 3e-2 (the tie with lr 1e-2 goes to the
    # earlier combination: the grid lists 3e-2 first).
    wanted = {3e-2: 0.9, 1e-3: 0.1, 1e-2: 0.9}
    lrs = iter([3e-2, 1e-3, 1e-2])
    monkeypatch.setattr(validation_module, "validation_score", lambda metrics: wanted[next(lrs)])
    job = ftm_job({"lr": [3e-2, 1e-3, 1e-2]})
    model, tokenizer = tiny_model(job.to_dict())
    out = tmp_path / "editor.pt"
    result = grid_search(job, model, tokenizer, train_records(), out)
    assert result.best.values == {"lr": 3e-2} and result.chosen == {"lr": 3e-2}
    rows = pd.read_csv(tmp_path / "editor.validation.csv")
    assert list(rows["lr"]) == [3e-2, 1e-3, 1e-2]
    assert list(rows["chosen"]) == [True, False, False]
    assert (tmp_path / "editor.loss.csv").is_file()


def test_real_scores_pick_the_maximum(tmp_path):
    job = ftm_job({"lr": [1e-9, 5e-2]})
    model, tokenizer = tiny_model(job.to_dict())
    out = tmp_path / "editor.pt"
    result = grid_search(job, model, tokenizer, train_records(), out)
    rows = pd.read_csv(tmp_path / "editor.validation.csv")
    # A metric undefined on the slice is an empty cell (validation_score counts it as 1).
    defined = [{k: v for k, v in row.items() if v == v} for row in rows.to_dict("records")]
    recomputed = [validation_score(row) for row in defined]
    assert rows["score"].tolist() == pytest.approx(recomputed)
    assert rows.loc[rows["chosen"], "score"].item() == max(rows["score"])
    assert result.best_score == max(rows["score"])
    # An editor at lr 1e-9 edits nothing: the larger step must win on efficacy.
    assert rows["efficacy"][1] > rows["efficacy"][0]
    assert result.chosen == {"lr": 5e-2}


def test_evaluation_uses_the_chosen_values(tmp_path):
    job = ftm_job({"lr": [1e-9, 5e-2], "steps": [2]})
    model, tokenizer = tiny_model(job.to_dict())
    out = tmp_path / "editor.pt"
    grid_search(job, model, tokenizer, train_records(), out)
    assert tuned_section(job, out)["lr"] == 5e-2
    editor = build_editor(job, model, tokenizer, checkpoint=out)
    assert editor.settings.lr == 5e-2 and editor.settings.steps == 2
    with pytest.raises(ConfigError, match=r"baselines\.ft-m\.search is set.*--checkpoint"):
        build_editor(job, model, tokenizer)
    other = ftm_job({"lr": [1e-9, 1e-1]})
    with pytest.raises(CheckpointMismatchError, match="search"):
        build_editor(other, model, tokenizer, checkpoint=out)
    moved = ftm_job({"lr": [1e-9, 5e-2], "steps": [2]}, norm_constraint=1.0)
    with pytest.raises(CheckpointMismatchError, match="section"):
        build_editor(moved, model, tokenizer, checkpoint=out)
    plain = JobConfig.from_dict({**job.to_dict(), "baselines": {"ft-m": {"lr": 1e-2, "steps": 3}}})
    with pytest.raises(ConfigError, match="has no search"):
        build_editor(plain, model, tokenizer, checkpoint=out)


def test_train_then_evaluate_through_the_cli(tmp_path):
    """The registry's fit, `hiedit train` writing the search, `hiedit evaluate --checkpoint`."""
    config = load_config(ROOT / "config.yaml")
    resolved = resolve_setup(config, "smoke")
    job = job_config(config, resolved, "tiny-llama", "geofacts-zsre", "ultraedit", 0)
    job["training"].update(validation_size=4, validation_edits=4)
    job["evaluation"].update(n_edits=4, num_pre=2, n_curve_points=1, curve_sample=2)
    job["baselines"]["ultraedit"]["search"] = {"lr": [1e-9, 1e-3]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    write_split(train_records(), tmp_path / "train.parquet")
    write_split(toy_records(4), tmp_path / "eval.parquet")
    editor = tmp_path / "editor" / "editor.pt"
    train = [
        "train",
        "--run-config",
        str(tmp_path / "job.json"),
        "--train-data",
        str(tmp_path / "train.parquet"),
        "--out",
        str(editor),
        "--log-validation",
        str(tmp_path / "editor" / "validation.csv"),
        "--no-progress",
    ]
    assert main(train) == 0
    info = json.loads(editor.with_name("editor.pt.runinfo.json").read_text())
    assert info["candidates"] == 2 and info["search_values"] in ({"lr": 1e-9}, {"lr": 1e-3})
    rows = pd.read_csv(tmp_path / "editor" / "validation.csv")
    assert len(rows) == 2 and rows["chosen"].sum() == 1
    evaluate = [
        "evaluate",
        "--run-config",
        str(tmp_path / "job.json"),
        "--eval-data",
        str(tmp_path / "eval.parquet"),
        "--out-dir",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main([*evaluate, "--untrained"]) == 2  # the search's output is required
    assert main([*evaluate, "--checkpoint", str(editor)]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["variant"] == "ultraedit" and metrics["n_edits"] == 4
    # A variant that fits nothing has no train job.
    plain = copy.deepcopy(job)
    del plain["baselines"]["ultraedit"]["search"]
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    train[2] = str(tmp_path / "plain.json")
    assert main(train) == 2


def test_memit_searches_its_layers_with_the_key_statistic_of_every_candidate(tmp_path):
    """fit-stats covers every layer of the grid; the evaluation edits the chosen layers."""
    config = load_config(ROOT / "config.yaml")
    resolved = resolve_setup(config, "smoke")
    job = job_config(config, resolved, "tiny-llama", "geofacts-zsre", "memit", 0)
    job["training"].update(validation_size=4, validation_edits=2)
    job["evaluation"].update(n_edits=2, num_pre=1, n_curve_points=1, curve_sample=1)
    job["baselines"]["memit"].update(v_num_grad_steps=2, n_prefixes=0)
    job["baselines"]["memit"]["search"] = {"layers": [[1, 2], [0, 2]]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    stats_job = {
        "model_name": "tiny-llama",
        "model": config["models"]["tiny-llama"],
        "baselines": {
            "key_stats": {"source": "pydoc-topics", "n_samples": 40, "max_length": 32},
            "memit": job["baselines"]["memit"],
        },
    }
    (tmp_path / "stats.json").write_text(json.dumps(stats_job))
    stats = tmp_path / "key_stats.pt"
    fit = ["baselines", "fit-stats", "--run-config", str(tmp_path / "stats.json")]
    assert main([*fit, "--out", str(stats), "--no-progress"]) == 0
    sidecar = json.loads(stats.with_suffix(".json").read_text())
    assert sorted(sidecar["modules"]) == [f"model.layers.{i}.mlp.down_proj" for i in (0, 1, 2)]
    write_split(train_records(), tmp_path / "train.parquet")
    write_split(toy_records(2), tmp_path / "eval.parquet")
    editor = tmp_path / "editor.pt"
    common = ["--run-config", str(tmp_path / "job.json"), "--no-progress"]
    train = ["train", *common, "--train-data", str(tmp_path / "train.parquet")]
    assert main([*train, "--out", str(editor)]) == 2  # MEMIT's search needs the statistic
    assert main([*train, "--out", str(editor), "--stats", str(stats)]) == 0
    chosen = json.loads(editor.with_name("editor.pt.runinfo.json").read_text())["search_values"]
    evaluate = ["evaluate", *common, "--eval-data", str(tmp_path / "eval.parquet")]
    out = tmp_path / "out"
    assert (
        main([*evaluate, "--checkpoint", str(editor), "--stats", str(stats), "--out-dir", str(out)])
        == 0
    )
    selected = pd.read_csv(out / "per_edit.csv")["selected"].unique().tolist()
    assert selected == [";".join(f"model.layers.{i}.mlp.down_proj" for i in chosen["layers"])]


def test_interrupted_search_resumes_after_its_finished_candidates(tmp_path, monkeypatch):
    job = ftm_job({"lr": [1e-3, 1e-2, 3e-2]})
    model, tokenizer = tiny_model(job.to_dict())
    whole = grid_search(job, model, tokenizer, train_records(), tmp_path / "whole" / "editor.pt")

    build = editors_module.build_baseline
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while the third candidate runs
        return build(*args, **kwargs)

    out = tmp_path / "resumed" / "editor.pt"
    monkeypatch.setattr(editors_module, "build_baseline", crashing)
    with pytest.raises(KeyboardInterrupt):
        grid_search(job, model, tokenizer, train_records(), out)
    partial = out.with_name("editor.pt.partial")
    assert len(json.loads(partial.read_text())["rows"]) == 2 and not out.exists()
    other = ftm_job({"lr": [1e-3, 1e-2, 5e-2]})
    with pytest.raises(CheckpointMismatchError, match="search"):
        grid_search(other, model, tokenizer, train_records(), out, resume=True)
    calls.clear()
    monkeypatch.setattr(editors_module, "build_baseline", build)
    resumed = grid_search(job, model, tokenizer, train_records(), out, resume=True)
    timing = {"seconds", "edit_seconds"}
    strip = [{k: v for k, v in row.items() if k not in timing} for row in resumed.rows]
    assert strip == [{k: v for k, v in row.items() if k not in timing} for row in whole.rows]
    assert resumed.chosen == whole.chosen and not partial.exists()
