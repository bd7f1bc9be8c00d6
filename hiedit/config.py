"""Read, validate and resolve ``config.yaml``: the selected setup and the per-job configuration.

The workflow validates the whole file against the schema shipped with the package
(``hiedit/schemas/config.schema.yaml``, :data:`SCHEMA_PATH`) and hands
each job the small resolved dictionary it needs (:func:`job_config`), as JSON, so that a job never
re-reads the file and Snakemake reruns exactly the jobs whose parameters changed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hiedit.errors import ConfigError

# Package data: found wherever the package is, installed or run from a checkout.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
SECTIONS = ("editor", "training", "evaluation")
# Variants that reuse another variant's trained networks (method.md §7).
TRAINED_BY = {"hiedit-rand": "hiedit", "static-k": "hiedit"}
# Variants evaluated with fresh, untrained networks (the "before training" baseline).
UNTRAINED = ("hiedit-untrained",)
K_SWEEP_PREFIX = "hiedit-k"


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return config


def _key_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _load_schema(schema_path: str | Path | None) -> dict[str, Any]:
    with open(schema_path or SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def validate_config(config: Mapping[str, Any], schema_path: str | Path | None = None) -> None:
    """Check ``config`` against the JSON schema and the cross-references; errors name the key."""
    import jsonschema

    schema = _load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"config key '{_key_path(e.absolute_path)}': {e.message}" for e in errors[:10]]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    _check_references(config, schema)


def _check_references(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    import jsonschema

    for name, model in config["models"].items():
        needed = {"local": "path", "hub": "name", "random": "architecture"}[model["source"]]
        if needed not in model:
            raise ConfigError(
                f"config key 'models.{name}.{needed}' is required for source {model['source']}"
            )
        if model["k"] > len(model["modules"]):
            raise ConfigError(
                f"config key 'models.{name}.k': K = {model['k']} exceeds the {len(model['modules'])} candidate modules"
            )
    for name, dataset in config["datasets"].items():
        if dataset["source"] == "download":
            needed = ["url"] if dataset["format"] == "counterfact" else ["train_url", "eval_url"]
            for key in needed:
                if key not in dataset:
                    raise ConfigError(
                        f"config key 'datasets.{name}.{key}' is required for a downloaded {dataset['format']} dataset"
                    )
    if config["setup"] not in config["setups"]:
        raise ConfigError(
            f"config key 'setup': {config['setup']!r} is not one of the setups {sorted(config['setups'])}"
        )
    for setup_name, setup in config["setups"].items():
        for kind in ("models", "datasets"):
            for i, item in enumerate(setup[kind]):
                if item not in config[kind]:
                    raise ConfigError(
                        f"config key 'setups.{setup_name}.{kind}[{i}]': {item!r} is not defined under '{kind}'"
                    )
        for model_name in setup["models"]:
            n_modules = len(config["models"][model_name]["modules"])
            for i, k in enumerate(setup.get("k_sweep", [])):
                if k > n_modules:
                    raise ConfigError(
                        f"config key 'setups.{setup_name}.k_sweep[{i}]': K = {k} exceeds the {n_modules} modules of {model_name}"
                    )
        for section, values in setup.get("overrides", {}).items():
            merged = {**config[section], **values}
            section_schema = {**schema["$defs"][section], "$defs": schema["$defs"]}
            for err in jsonschema.Draft202012Validator(section_schema).iter_errors(merged):
                raise ConfigError(
                    f"config key 'setups.{setup_name}.overrides.{section}.{_key_path(err.absolute_path)}': {err.message}"
                )


def resolve_setup(config: Mapping[str, Any], setup: str | None = None) -> dict[str, Any]:
    """The selected setup with the override-merged sections; variants include the K sweep."""
    name = setup or config["setup"]
    if name not in config["setups"]:
        raise ConfigError(f"config key 'setup': {name!r} is not one of {sorted(config['setups'])}")
    chosen = config["setups"][name]
    resolved = {
        "name": name,
        "models": list(chosen["models"]),
        "datasets": list(chosen["datasets"]),
        "variants": list(chosen["variants"])
        + [f"{K_SWEEP_PREFIX}{k}" for k in chosen.get("k_sweep", [])],
        "seeds": list(chosen["seeds"]),
        "geofacts_eval": chosen.get("geofacts_eval", 0),
        "job_threads": int(chosen.get("job_threads", 2)),
    }
    overrides = chosen.get("overrides", {})
    for section in SECTIONS:
        resolved[section] = {**copy.deepcopy(config[section]), **overrides.get(section, {})}
    return resolved


def trained_variant(variant: str) -> str | None:
    """Which variant's trained networks a variant evaluates with (None: untrained networks)."""
    if variant in UNTRAINED:
        return None
    return TRAINED_BY.get(variant, variant)


def job_config(
    config: Mapping[str, Any],
    resolved: Mapping[str, Any],
    model: str,
    dataset: str,
    variant: str,
    seed: int,
) -> dict[str, Any]:
    """Everything one train/evaluate job needs, as plain JSON-able data."""
    return {
        "setup": resolved["name"],
        "model_name": model,
        "model": copy.deepcopy(config["models"][model]),
        "dataset_name": dataset,
        "dataset": copy.deepcopy(config["datasets"][dataset]),
        "variant": variant,
        "seed": int(seed),
        **{section: copy.deepcopy(resolved[section]) for section in SECTIONS},
    }


def read_job_config(value: str) -> dict[str, Any]:
    """Parse ``--run-config``: a JSON string, or a path to a JSON/YAML file holding one."""
    text = value.strip()
    if not text.startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"--run-config {value!r}: neither JSON nor an existing file")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--run-config: not valid JSON: {err}") from err
