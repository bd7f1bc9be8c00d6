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
            lambda c: c["setups"]["default"]["variants"].append("bogus"),
            "setups.default.variants[6]",
        ),
        (lambda c: c["editor"].update(style="adam"), "editor.style"),
        (lambda c: c["training"].update(back_depth=0), "training.back_depth"),
        (lambda c: c["models"]["smollm2-135m"].update(k=13), "models.smollm2-135m.k"),
        (lambda c: c.update(setup="nope"), "setup"),
        (lambda c: c["setups"]["smoke"]["models"].append("gpt-5"), "setups.smoke.models[1]"),
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
    assert read_job_config(text) == job
    path = tmp_path / "job.json"
    path.write_text(text)
    assert read_job_config(str(path))["seed"] == 3
    with pytest.raises(ConfigError, match="neither JSON nor an existing file"):
        read_job_config(str(tmp_path / "missing.json"))


def test_reused_networks():
    assert trained_variant("hiedit-rand") == "hiedit"
    assert trained_variant("static-k") == "hiedit"
    assert trained_variant("rledit") == "rledit"
