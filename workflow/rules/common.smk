# Configuration validation, the resolved setup and helper functions shared by every stage.
import json
import os
import shlex

from hiedit import registry
from hiedit.config import job_config, resolve_setup, validate_config

validate_config(config)
SETUP = resolve_setup(config)
# The report's front page (workflow/report/workflow.rst) reads what runs, already merged.
config["resolved_setup"] = SETUP
# Rules run the project from this checkout (`python -m hiedit`), installed or not: the same
# commands work in the user's environment, in a rule's conda environment and on a cluster node.
# (Snakemake formats the prefix too: its braces are doubled once more.)
shell.prefix(
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)
# Threads per training/evaluation job (see job_threads in the schema).
JOB_THREADS = SETUP["job_threads"]


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9.-]*",
    dataset="[A-Za-z0-9][A-Za-z0-9.-]*",
    variant="[a-z0-9-]+",
    seed="[0-9]+",
    split="train|eval",


GEOFACTS_RAW = "results/data/geofacts/raw/{format}_{split}.json"


def dataset_entry(name):
    return config["datasets"][name]


def raw_inputs(wildcards):
    """Raw files of a dataset: geofacts train/eval, ZsRE train/eval, or one CounterFact file."""
    entry = dataset_entry(wildcards.dataset)
    if entry["source"] == "geofacts":
        return {
            split: GEOFACTS_RAW.format(format=entry["format"], split=split)
            for split in ("train", "eval")
        }
    if "url" in entry:
        return {"all": f"resources/data/{wildcards.dataset}/all.json"}
    return {
        split: f"resources/data/{wildcards.dataset}/{split}.json"
        for split in ("train", "eval")
    }


def raw_input_flags(wildcards, input):
    if "all" in input.keys():
        return f"--input {input.all} --split-by-subject"
    return f"--train-input {input.train} --eval-input {input.eval}"


def model_entry(name):
    return config["models"][name]


def model_inputs(name):
    """The local model folder a job needs (empty for hub and random models)."""
    entry = model_entry(name)
    return [entry["path"]] if entry["source"] == "local" else []


def all_model_inputs():
    return sorted({path for m in SETUP["models"] for path in model_inputs(m)})


def all_prepared_data():
    return expand(list(rules.prepare_data.output), dataset=SETUP["datasets"])


def run_config(wildcards):
    """The JSON configuration of one train/evaluate job (a param, so edits rerun it)."""
    return json.dumps(
        job_config(
            config,
            SETUP,
            wildcards.model,
            wildcards.dataset,
            wildcards.variant,
            int(wildcards.seed),
        ),
        sort_keys=True,
    )


def checkpoint_of(wildcards):
    """The fitted editor a variant is evaluated with (hiedit-rand and static-k reuse hiedit's)."""
    fitted = registry.get(wildcards.variant).checkpoint
    if fitted is None:
        return []
    return expand(
        rules.train_editor.output.editor,
        model=wildcards.model,
        dataset=wildcards.dataset,
        variant=fitted,
        seed=wildcards.seed,
    )


def editor_flag(wildcards, input):
    return f"--checkpoint {input.editor}" if input.editor else "--untrained"


def fitted_variants():
    """The variants of the setup whose editors have a training (fitting) job."""
    return sorted({registry.get(v).checkpoint for v in SETUP["variants"]} - {None})


def sweep_ks():
    """K values of the setup's K sweep (hiedit-k<K> variants)."""
    return [
        v.removeprefix(registry.K_SWEEP_PREFIX)
        for v in SETUP["variants"]
        if registry.is_sweep(v)
    ]


def is_gpu_model(name):
    return model_entry(name)["source"] == "hub"


def all_runs(path, variants=None):
    """``path`` (a rule's output) for every model, dataset, variant and seed of the setup."""
    return expand(
        path,
        model=SETUP["models"],
        dataset=SETUP["datasets"],
        variant=SETUP["variants"] if variants is None else variants,
        seed=SETUP["seeds"],
    )
