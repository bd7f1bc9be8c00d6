"""Config schema validation, setup resolution and job configs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from hiedit.config import (
    job_config,
    load_config,
    read_job_config,
    resolve_setup,
    trained_variant,
    validate_config,
)
from hiedit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "config.yaml")


def test_shipped_config_is_valid(config):
    validate_config(config)
    assert set(config["setups"]) >= {"default", "smoke", "paper"}


def test_every_schema_key_has_a_description():
    import yaml

    schema = yaml.safe_load((ROOT / "hiedit/schemas/config.schema.yaml").read_text())
    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.get("properties", {}).items():
                if "description" not in value and "$ref" not in value:
                    missing.append(f"{path}.{key}")
                walk(value, f"{path}.{key}")
            for key in ("additionalProperties", "items"):
                if isinstance(node.get(key), dict):
                    walk(node[key], path)
            for key, value in node.get("$defs", {}).items():
                walk(value, f"$defs.{key}")

    walk(schema, "config")
    assert missing == []


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (
            lambda c: c["setups"]["default"]["variants"].insert(0, "bogus"),
            "setups.default.variants[0]",
        ),
        (lambda c: c["editor"].update(style="adam"), "editor.style"),
        (lambda c: c["training"].update(back_depth=0), "training.back_depth"),
        (lambda c: c["models"]["smollm2-135m"].update(k=13), "models.smollm2-135m.k"),
        (lambda c: c.update(setup="nope"), "setup"),
        (lambda c: c["setups"]["smoke"]["models"].append("gpt-5"), "setups.smoke.models[2]"),
        (
            lambda c: c["setups"]["smoke"]["overrides"]["training"].update(time_decay=2),
            "setups.smoke.overrides.training.time_decay",
        ),
        (lambda c: c["editor"].update(unknown_key=1), "editor"),
        (lambda c: c["datasets"]["zsre"].pop("eval_url"), "datasets.zsre.eval_url"),
    ],
)
def test_bad_value_names_the_key(config, mutate, key):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError, match=re.escape(f"'{key}")):
        validate_config(bad)


def test_resolve_setup_merges_overrides_and_adds_k_sweep(config):
    smoke = resolve_setup(config, "smoke")
    assert smoke["editor"]["rank"] == config["setups"]["smoke"]["overrides"]["editor"]["rank"]
    assert (
        smoke["editor"]["style"] == config["editor"]["style"]
    )  # untouched keys keep the paper value
    assert [f"hiedit-k{k}" for k in config["setups"]["smoke"]["k_sweep"]] == smoke["variants"][
        -len(config["setups"]["smoke"]["k_sweep"]) :
    ]
    paper = resolve_setup(config, "paper")
    assert paper["evaluation"]["n_edits"] == 20000
    assert paper["models"] == ["llama3-8b", "gemma2-9b"]


def test_job_config_round_trips_through_json(config, tmp_path):
    resolved = resolve_setup(config, "smoke")
    job = job_config(config, resolved, "tiny-llama", "geofacts-zsre", "hiedit", 3)
    text = json.dumps(job)
    assert read_job_config(text).to_dict() == job
    path = tmp_path / "job.json"
    path.write_text(text)
    assert read_job_config(str(path)).seed == 3
    with pytest.raises(ConfigError, match="neither JSON nor an existing file"):
        read_job_config(str(tmp_path / "missing.json"))


def test_reused_networks():
    assert trained_variant("hiedit-rand") == "hiedit"
    assert trained_variant("static-k") == "hiedit"
    assert trained_variant("rledit") == "rledit"
    assert trained_variant("hiedit-untrained") is None
    assert trained_variant("hiedit-k3") == "hiedit-k3"


def _schema():
    import yaml

    return yaml.safe_load((ROOT / "hiedit/schemas/config.schema.yaml").read_text())


def test_schema_variant_names_are_the_registry():
    from hiedit import registry

    setup = _schema()["properties"]["setups"]["additionalProperties"]
    items = setup["properties"]["variants"]["items"]
    assert items["enum"] == registry.names()


@pytest.mark.parametrize("section", ["editor", "training", "evaluation"])
def test_typed_sections_have_exactly_the_schema_keys(section):
    import dataclasses

    from hiedit.config import SECTION_TYPES

    fields = [f.name for f in dataclasses.fields(SECTION_TYPES[section])]
    definition = _schema()["$defs"][section]
    assert sorted(fields) == sorted(definition["properties"]) == sorted(definition["required"])


def test_job_config_types_its_sections_and_names_bad_keys(config):
    from hiedit.config import JobConfig

    job = job_config(
        config, resolve_setup(config, "smoke"), "tiny-llama", "geofacts-zsre", "hiedit", 0
    )
    typed = JobConfig.from_dict(job)
    assert isinstance(typed.training.meta_lr, float) and typed.training.back_depth == 2
    assert typed.evaluation.static_k_modules == ()
    missing = copy.deepcopy(job)
    del missing["training"]["loc_coef"]
    with pytest.raises(ConfigError, match="'training'.*loc_coef|loc_coef"):
        JobConfig.from_dict(missing)
    wrong = copy.deepcopy(job)
    wrong["editor"]["rank"] = "big"
    with pytest.raises(ConfigError, match="'editor.rank'"):
        JobConfig.from_dict(wrong)
    unknown = copy.deepcopy(job)
    unknown["variant"] = "hiedit-typo"
    with pytest.raises(ConfigError, match="unknown variant 'hiedit-typo'"):
        JobConfig.from_dict(unknown)


def test_variant_overrides_are_written_into_the_run_configuration(config):
    resolved = resolve_setup(config, "smoke")
    mend = job_config(config, resolved, "tiny-llama", "geofacts-zsre", "mend", 0)
    hiedit = job_config(config, resolved, "tiny-llama", "geofacts-zsre", "hiedit", 0)
    assert mend["training"]["trajectory_length"] == 1 and mend["training"]["back_depth"] == 1
    # single-edit training sees as many edits as the setup's trajectories
    edits = hiedit["training"]["n_trajectories"] * hiedit["training"]["trajectory_length"]
    assert mend["training"]["n_trajectories"] == edits
    # ... and is validated after as many edits as the trajectory training
    length = hiedit["training"]["trajectory_length"]
    assert mend["training"]["validate_every"] == hiedit["training"]["validate_every"] * length
    step_only = job_config(config, resolved, "tiny-llama", "geofacts-zsre", "step-only", 0)
    assert step_only["training"]["trainable"] == "step_size"
    assert hiedit["training"]["trainable"] == "all"


def test_nested_command_line_overrides_are_typed_before_validation(config):
    """Snakemake's `--config evaluation='{"n_edits": 5}'` passes every nested value as a string."""
    cli = copy.deepcopy(config)
    cli["evaluation"] = {**cli["evaluation"], "n_edits": "5", "batch_size": "8"}
    cli["training"] = {**cli["training"], "meta_lr": "3e-4", "intrinsic_reward": "false"}
    cli["setups"]["smoke"]["overrides"]["evaluation"]["n_edits"] = "7"
    validate_config(cli)
    assert cli["evaluation"]["n_edits"] == 5 and cli["training"]["meta_lr"] == 3e-4
    assert cli["training"]["intrinsic_reward"] is False
    assert cli["setups"]["smoke"]["overrides"]["evaluation"]["n_edits"] == 7
    bad = copy.deepcopy(config)
    bad["evaluation"] = {**bad["evaluation"], "n_edits": "five"}
    with pytest.raises(ConfigError, match="'evaluation.n_edits'"):
        validate_config(bad)


def test_a_job_contradicting_its_variant_is_refused(config):
    from hiedit.config import JobConfig

    resolved = resolve_setup(config, "smoke")
    job = job_config(config, resolved, "tiny-llama", "geofacts-zsre", "step-only", 0)
    job["training"]["trainable"] = "all"
    with pytest.raises(ConfigError, match="'training.trainable': variant 'step-only' runs with"):
        JobConfig.from_dict(job)


def test_study_1000_reruns_the_study_on_longer_streams(config):
    # The 1,000-edit setup must differ from the study in the stream only: the same data, recipe
    # and seeds, so its editors are the study's and its first 400 edits are the study's stream.
    study, longer = resolve_setup(config, "study"), resolve_setup(config, "study-1000")
    for key in ("models", "seeds", "geofacts_eval", "geofacts_extra_eval", "long_stream"):
        assert longer[key] == study[key], key
    assert set(longer["datasets"]) < set(study["datasets"])
    assert set(longer["variants"]) < set(study["variants"])
    assert longer["results"] != study["results"]
    for variant in longer["variants"]:
        a = job_config(config, study, "smollm2-135m", "geofacts-zsre", variant, 1)
        b = job_config(config, longer, "smollm2-135m", "geofacts-zsre", variant, 1)
        assert b["evaluation"]["n_edits"] == 1000 and a["evaluation"]["n_edits"] == 400
        assert b["evaluation"]["num_pre"] == a["evaluation"]["num_pre"]
        changed = {k for k in a["evaluation"] if a["evaluation"][k] != b["evaluation"][k]}
        assert changed <= {"n_edits", "n_curve_points", "curve_sample"}
        for section in ("evaluation", "setup"):
            a.pop(section), b.pop(section)
        assert a == b, variant
