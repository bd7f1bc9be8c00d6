"""Read, validate and resolve ``config.yaml``; the typed configuration every job runs under.

The workflow validates the whole file against the schema shipped with the package
(``hiedit/schemas/config.schema.yaml``, :data:`SCHEMA_PATH`: the single source of every key's
description, type and range) and hands each job the small resolved dictionary it needs
(:func:`job_config`), as JSON, so that a job never re-reads the file and Snakemake reruns exactly
the jobs whose parameters changed. A job turns that dictionary into a :class:`JobConfig` once
(:meth:`JobConfig.from_dict`, which checks each section against the same schema); code below the
command line reads typed, frozen fields and never coerces or defaults a value itself.

This module is torch-free: the Snakefile imports it at parse time.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hiedit import registry
from hiedit.errors import ConfigError

# Package data: found wherever the package is, installed or run from a checkout.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
SECTIONS = ("editor", "training", "evaluation")
JOB_DATASET_KEYS = ("source", "format")


# --- typed sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EditorConfig:
    """The ``editor`` section (descriptions in the schema)."""

    style: str
    rank: int
    n_blocks: int
    lr: float
    token: str
    router_hidden: int
    gumbel_tau: float
    update_normalizer_in_eval: bool
    commit_precision: str


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training`` section (descriptions in the schema)."""

    n_train: int
    trajectory_length: int
    n_trajectories: int
    edits_per_step: int
    back_depth: int
    side_path_chunk: int
    pack_tokens: int
    time_decay: float
    loc_coef: float
    l2_coef: float
    meta_lr: float
    step_size_lr: float
    clip_norm: float
    update_every: int
    intrinsic_reward: bool
    pathwise_gradient: bool
    score_function: bool
    trainable: str
    validation_size: int
    validation_edits: int
    validate_every: int
    patience: int
    step_search_min: float
    step_search_max: float
    step_search_passes: int
    warmup_records: int
    checkpoint_every: int


@dataclass(frozen=True)
class EvaluationConfig:
    """The ``evaluation`` section (descriptions in the schema)."""

    n_edits: int
    num_pre: int
    n_curve_points: int
    curve_sample: int
    batch_size: int
    static_k_modules: tuple[str, ...]
    final_sample: int


SECTION_TYPES = {"editor": EditorConfig, "training": TrainingConfig, "evaluation": EvaluationConfig}


def _convert(value: Any, kind: Any, where: str) -> Any:
    """``value`` as ``kind`` (int, float, bool, str or tuple[str, ...]); refuses lossy casts."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{where}': expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{where}': expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{where}': expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{where}': expected a string, got {value!r}")
        return value
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{where}': expected a list, got {value!r}")
        (item_kind, _) = typing.get_args(kind)
        return tuple(_convert(v, item_kind, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"unsupported field type {kind!r} at {where}")


def build_section(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """A frozen dataclass ``cls`` from ``values``: every field required, no unknown key."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key '{where}': expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"config key '{where}.{missing[0]}' is missing")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"config key '{where}.{unknown[0]}' is not a known key")
    return cls(**{n: _convert(values[n], hints[n], f"{where}.{n}") for n in names})


def section_dict(section: Any) -> dict[str, Any]:
    """A section dataclass as plain JSON-able data (tuples become lists)."""
    return {
        f.name: list(v) if isinstance(v := getattr(section, f.name), tuple) else v
        for f in dataclasses.fields(section)
    }


@dataclass(frozen=True)
class JobConfig:
    """Everything one train/evaluate job runs under (built from :func:`job_config`'s output).

    ``model`` and ``dataset`` are the catalogue entries as written in ``config.yaml`` (their
    meaning belongs to the model loader and the data stage); ``baselines`` holds the raw
    hyperparameter sections of the baseline editors, which each editor types itself.
    """

    setup: str
    model_name: str
    model: Mapping[str, Any]
    dataset_name: str
    dataset: Mapping[str, Any]
    variant: str
    seed: int
    editor: EditorConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    baselines: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, job: Mapping[str, Any]) -> JobConfig:
        """Check ``job`` (sections against the schema, then the field types) and type it."""
        if isinstance(job, JobConfig):
            return job
        if not isinstance(job, Mapping):
            raise ConfigError(f"job configuration: expected a mapping, got {type(job).__name__}")
        for key in ("model", "model_name", "dataset_name", "variant", "seed", *SECTIONS):
            if key not in job:
                raise ConfigError(f"job configuration: missing key '{key}'")
        for section in SECTIONS:
            _check_section(section, job[section], section)
        spec = registry.get(job["variant"])  # an unknown variant names itself
        for section, fixed in (
            ("editor", spec.editor_overrides),
            ("training", spec.training_overrides),
        ):
            for key, value in fixed.items():
                if job[section].get(key) != value:
                    raise ConfigError(
                        f"config key '{section}.{key}': variant {spec.name!r} runs with "
                        f"{value!r}, the job says {job[section].get(key)!r}"
                    )
        baselines = job.get("baselines") or {}
        if spec.baseline is not None:
            if spec.baseline not in baselines:
                raise ConfigError(f"job configuration: missing key 'baselines.{spec.baseline}'")
            check_baseline_section(
                spec.baseline, baselines[spec.baseline], f"baselines.{spec.baseline}"
            )
        return cls(
            setup=str(job.get("setup", "")),
            model_name=str(job["model_name"]),
            model=copy.deepcopy(dict(job["model"])),
            dataset_name=str(job["dataset_name"]),
            dataset=copy.deepcopy(dict(job.get("dataset") or {})),
            variant=str(job["variant"]),
            seed=_convert(job["seed"], int, "seed"),
            **{s: build_section(SECTION_TYPES[s], job[s], s) for s in SECTIONS},
            baselines=copy.deepcopy(dict(job.get("baselines") or {})),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data that :meth:`from_dict` reads back to an equal config."""
        return {
            "setup": self.setup,
            "model_name": self.model_name,
            "model": copy.deepcopy(dict(self.model)),
            "dataset_name": self.dataset_name,
            "dataset": copy.deepcopy(dict(self.dataset)),
            "variant": self.variant,
            "seed": self.seed,
            **{s: section_dict(getattr(self, s)) for s in SECTIONS},
            "baselines": copy.deepcopy(dict(self.baselines)),
        }

    def replace(self, **sections: Mapping[str, Any]) -> JobConfig:
        """A copy with some section keys changed, e.g. ``replace(editor={"lr": 1e-4})``."""
        data = self.to_dict()
        for name, values in sections.items():
            if name in SECTIONS:
                data[name] = {**data[name], **values}
            else:
                data[name] = values
        return JobConfig.from_dict(data)

    @property
    def module_names(self) -> list[str]:
        return list(self.model["modules"])

    @property
    def variant_spec(self) -> registry.Variant:
        return registry.get(self.variant)


# --- the whole file ---------------------------------------------------------------------------


def _baseline_def(name: str) -> str:
    """The schema definition of a baseline's section: ``ft-m`` -> ``baseline_ft_m``."""
    return "baseline_" + name.replace("-", "_")


def check_baseline_section(
    name: str, values: Any, where: str, schema: Mapping[str, Any] | None = None
) -> None:
    """A baseline's section against its schema definition, and every candidate value of its
    ``search`` grid merged into it (:mod:`hiedit.baselines.tuning`); errors name the key."""
    from hiedit.baselines.tuning import check_search

    schema = schema or load_schema()
    definition = _baseline_def(name)
    _check_section(definition, values, where, schema)
    known = list(schema["$defs"][definition].get("properties", {}))

    def check(merged: Mapping[str, Any], at: str) -> None:
        try:
            _check_section(definition, merged, where, schema)
        except ConfigError as err:
            raise ConfigError(f"{at}: with this candidate, {err}") from None

    check_search(values, known, where, check)


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


@functools.lru_cache(maxsize=4)
def _cached_schema(path: str) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def load_schema(schema_path: str | Path | None = None) -> dict[str, Any]:
    return copy.deepcopy(_cached_schema(str(schema_path or SCHEMA_PATH)))


@functools.lru_cache(maxsize=1)
def _validator_class() -> type:
    """Draft 2020-12 with strict integers: JSON Schema counts 2.0 as an integer, but a count
    written 2.0 would pass here and be refused by the job (or become a wildcard "seed0.0")."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)


def _check_section(section: str, values: Any, where: str, schema: Mapping | None = None) -> None:
    schema = schema or load_schema()
    section_schema = {**schema["$defs"][section], "$defs": schema["$defs"]}
    errors = sorted(
        _validator_class()(section_schema).iter_errors(values),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        err = errors[0]
        path = _key_path(err.absolute_path)
        key = f"{where}.{path}" if err.absolute_path else where
        raise ConfigError(f"config key '{key}': {err.message}")


def coerce_cli_strings(node: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    """Values Snakemake's ``--config a='{"b": 5}'`` leaves as strings, typed as the schema says.

    Snakemake reads nested ``--config`` values with YAML's base loader, so every scalar in them
    arrives as a string. Only strings whose schema type is integer, number or boolean are
    converted (and only when they parse); everything else is left for the validator to judge.
    """
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if isinstance(node, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in node.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                node[key] = coerce_cli_strings(value, sub, root)
        return node
    if isinstance(node, list) and isinstance(schema.get("items"), dict):
        return [coerce_cli_strings(v, schema["items"], root) for v in node]
    if isinstance(node, str):
        kinds = schema.get("type")
        kinds = [kinds] if isinstance(kinds, str) else (kinds or [])
        text = node.strip()
        if "boolean" in kinds and text.lower() in ("true", "false"):
            return text.lower() == "true"
        for kind, parse in (("integer", int), ("number", float)):
            if kind in kinds:
                try:
                    return parse(text)
                except ValueError:
                    pass
    return node


def validate_config(config: dict[str, Any], schema_path: str | Path | None = None) -> None:
    """Check ``config`` against the JSON schema and the cross-references; errors name the key.

    Strings that Snakemake's nested ``--config`` overrides produce are first typed in place
    (:func:`coerce_cli_strings`).
    """
    schema = load_schema(schema_path)
    coerce_cli_strings(config, schema, schema)
    setups = config.get("setups")
    if isinstance(setups, dict):
        for setup in setups.values():
            overrides = setup.get("overrides") if isinstance(setup, dict) else None
            for section, values in (overrides or {}).items():
                if section in schema["$defs"] and isinstance(values, dict):
                    coerce_cli_strings(values, schema["$defs"][section], schema)
    validator = _validator_class()(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"config key '{_key_path(e.absolute_path)}': {e.message}" for e in errors[:10]]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    _check_references(config, schema)


def _check_references(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    for name, values in config.get("baselines", {}).items():
        check_baseline_section(name, values, f"baselines.{name}", schema)
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
        overrides = dict(setup.get("overrides", {}))
        for name, values in overrides.pop("baselines", {}).items():
            where = f"setups.{setup_name}.overrides.baselines.{name}"
            if name not in config.get("baselines", {}):
                raise ConfigError(f"config key '{where}': no baseline section {name!r}")
            merged = {**config["baselines"][name], **values}
            check_baseline_section(name, merged, where, schema)
        for section, values in overrides.items():
            _check_section(
                section,
                {**config[section], **values},
                f"setups.{setup_name}.overrides.{section}",
                schema,
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
        + [f"{registry.K_SWEEP_PREFIX}{k}" for k in chosen.get("k_sweep", [])],
        "seeds": list(chosen["seeds"]),
        "geofacts_eval": chosen.get("geofacts_eval", 0),
        "geofacts_extra_eval": chosen.get("geofacts_extra_eval", 0),
        "geofacts_max_per_relation": chosen.get("geofacts_max_per_relation", 3000),
        "job_threads": int(chosen.get("job_threads", 2)),
        "results": chosen.get("results_dir", "results"),
        "variant_seeds": {v: list(seeds) for v, seeds in chosen.get("variant_seeds", {}).items()},
        "long_stream": copy.deepcopy(chosen.get("long_stream")),
    }
    overrides = chosen.get("overrides", {})
    for section in SECTIONS:
        resolved[section] = {**copy.deepcopy(config[section]), **overrides.get(section, {})}
    own = overrides.get("baselines", {})
    resolved["baselines"] = {
        name: {**copy.deepcopy(values), **own.get(name, {})}
        for name, values in config.get("baselines", {}).items()
    }
    return resolved


def trained_variant(variant: str) -> str | None:
    """Which variant's fitted editor a variant evaluates with (None: nothing is fitted)."""
    return registry.get(variant).checkpoint


def variant_sections(
    variant: str, editor: Mapping[str, Any], training: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The setup's ``editor`` and ``training`` sections with the variant's own values on top."""
    spec = registry.get(variant)
    editor = {**editor, **spec.editor_overrides}
    setup_length = int(training["trajectory_length"])
    base_edits = int(training["n_trajectories"]) * setup_length
    training = {**training, **spec.training_overrides}
    if spec.same_edits:
        # Single-edit training sees as many edits as the setup's trajectory training, and is
        # validated and checkpointed after as many edits as the setup's training is.
        length = int(training["trajectory_length"])
        training["n_trajectories"] = max(1, base_edits // length)
        for key in ("validate_every", "checkpoint_every"):
            training[key] = max(1, int(training[key]) * setup_length // length)
    return editor, training


def job_config(
    config: Mapping[str, Any],
    resolved: Mapping[str, Any],
    model: str,
    dataset: str,
    variant: str,
    seed: int,
) -> dict[str, Any]:
    """Everything one train/evaluate job needs, as plain JSON-able data."""
    editor, training = variant_sections(variant, resolved["editor"], resolved["training"])
    return {
        "setup": resolved["name"],
        "model_name": model,
        "model": copy.deepcopy(config["models"][model]),
        "dataset_name": dataset,
        # What a job needs of its dataset: preparation settings (URLs, malformed-record policy)
        # are the data stage's, and changing them must not rerun every job.
        "dataset": {key: config["datasets"][dataset][key] for key in JOB_DATASET_KEYS},
        "variant": variant,
        "seed": int(seed),
        "editor": copy.deepcopy(editor),
        "training": copy.deepcopy(training),
        "evaluation": copy.deepcopy(resolved["evaluation"]),
        # Only this variant's own baseline section: another editor's change must not rerun it.
        "baselines": baseline_section(variant, resolved.get("baselines", {})),
    }


def baseline_section(variant: str, baselines: Mapping[str, Any]) -> dict[str, Any]:
    """``{section: values}`` of a baseline variant (with its own overrides), else ``{}``.

    Keys the variant fixes are left out of the section's ``search`` grid (ultraedit-1 does not
    search ``edits_per_turn``); an emptied grid is dropped."""
    spec = registry.get(variant)
    if spec.baseline is None:
        return {}
    if spec.baseline not in baselines:
        raise ConfigError(
            f"config key 'baselines.{spec.baseline}' is needed by variant {variant!r}"
        )
    section = {**copy.deepcopy(baselines[spec.baseline]), **spec.baseline_overrides}
    search = spec.baseline_search(baselines)
    section.pop(registry.SEARCH_KEY, None)
    if search:
        section[registry.SEARCH_KEY] = copy.deepcopy(search)
    return {spec.baseline: section}


def read_job_config(value: str) -> JobConfig:
    """Parse ``--run-config``: a JSON string, or a path to a JSON/YAML file holding one."""
    text = value.strip()
    source = "--run-config"
    if not text.startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"--run-config {value!r}: neither JSON nor an existing file")
        text = path.read_text()
        source = str(path)
        if path.suffix in (".yaml", ".yml"):
            return _typed(yaml.safe_load(text), source)
    try:
        return _typed(json.loads(text), source)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON: {err}") from err


def _typed(job: Any, source: str) -> JobConfig:
    try:
        return JobConfig.from_dict(job)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
