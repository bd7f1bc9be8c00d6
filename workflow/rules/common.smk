# Configuration validation, the resolved setup and helper functions shared by every stage.
import json
import os

from hiedit.config import (
    job_config,
    resolve_setup,
    trained_variant,
    validate_config,
)

validate_config(config)
SETUP = resolve_setup(config)
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
    return expand(
        "results/data/{dataset}/{split}.parquet",
        dataset=SETUP["datasets"],
        split=["train", "eval"],
    )


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
    """The trained editor a variant is evaluated with (hiedit-rand and static-k reuse hiedit's)."""
    trained = trained_variant(wildcards.variant)
    if trained is None:
        return []
    return "results/editors/{model}/{dataset}/{variant}/seed{seed}/editor.pt".format(
        model=wildcards.model,
        dataset=wildcards.dataset,
        variant=trained,
        seed=wildcards.seed,
    )


def editor_flag(wildcards, input):
    return f"--checkpoint {input.editor}" if input.editor else "--untrained"


def trained_variants():
    return sorted({trained_variant(v) for v in SETUP["variants"]} - {None})


def is_gpu_model(name):
    return model_entry(name)["source"] == "hub"
