# Configuration validation, the resolved setup and helper functions shared by every stage.
import json
import os
import shlex

from hiedit import registry
from hiedit.commands.baselines import stats_modules
from hiedit.config import job_config, resolve_setup, validate_config

validate_config(config)
SETUP = resolve_setup(config)
# Every computed file of the setup lives under this folder (`results` for the default setup).
RESULTS = SETUP["results"]


def res(path):
    """``path`` under the setup's results folder."""
    return os.path.join(RESULTS, path)


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
    n_edits="[0-9]+",


GEOFACTS_RAW = res("data/geofacts/raw/{format}_{split}.json")


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
    job = job_config(
        config,
        SETUP,
        wildcards.model,
        wildcards.dataset,
        wildcards.variant,
        int(wildcards.seed),
    )
    return json.dumps(job, sort_keys=True)


def long_run_config(wildcards):
    """A long-stream job: the setup's job with the long stream's evaluation settings."""
    job = json.loads(run_config(wildcards))
    stream = SETUP["long_stream"]
    job["evaluation"]["n_edits"] = stream["n_edits"]
    for key in ("n_curve_points", "curve_sample", "final_sample"):
        if key in stream:
            job["evaluation"][key] = stream[key]
    return json.dumps(job, sort_keys=True)


def unedited_run_config(wildcards):
    """The job that scores the unedited model on a stream of ``n_edits`` records."""
    job = job_config(
        config, SETUP, wildcards.model, wildcards.dataset, "hiedit-untrained", 0
    )
    job["evaluation"]["n_edits"] = int(wildcards.n_edits)
    return json.dumps(job, sort_keys=True)


def eval_split_size(dataset):
    """Records the prepared eval split keeps: the longest stream run on the dataset."""
    stream = SETUP["long_stream"]
    longest = SETUP["evaluation"]["n_edits"]
    if stream and dataset in stream["datasets"]:
        longest = max(longest, stream["n_edits"])
    return longest


def checkpoint_of(wildcards):
    """The fitted editor a variant is evaluated with (hiedit-rand and static-k reuse hiedit's;
    a baseline with a `search` in the setup, the values its search chose)."""
    fitted = registry.get(wildcards.variant).checkpoint_under(SETUP["baselines"])
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


def stats_of(wildcards):
    """The fitted statistic a baseline variant needs on the job's model (none for the others)."""
    needed = registry.get(wildcards.variant).stats
    if needed is None:
        return []
    # The rules live in baselines.smk, parsed after this file: looked up when the DAG is built.
    outputs = {"key_stats": rules.fit_key_stats.output.stats}
    return expand(outputs[needed], model=wildcards.model)


def stats_flag(wildcards, input):
    return f"--stats {input.stats}" if input.stats else ""


def key_stats_run_config(wildcards):
    """The run configuration of fit_key_stats: the text settings and the modules to fit, the
    union over the setup's MEMIT/AlphaEdit sections and their search grids (so that a change of
    another key, e.g. a λ grid, does not refit the statistic)."""
    users = {
        registry.get(v).baseline
        for v in SETUP["variants"]
        if registry.get(v).stats == "key_stats"
    }
    sections = {name: SETUP["baselines"][name] for name in sorted(users)}
    modules = (
        stats_modules({"model_name": wildcards.model, "baselines": sections})
        if sections
        else []
    )
    return json.dumps(
        {
            "model_name": wildcards.model,
            "model": model_entry(wildcards.model),
            "baselines": {"key_stats": SETUP["baselines"]["key_stats"]},
            "modules": modules,
        },
        sort_keys=True,
    )


def seeds_of(variant):
    """The seeds a variant runs with: ``variant_seeds`` of the setup, else its ``seeds`` (only
    the first for an editor that draws nothing at random: the others would repeat it).
    """
    if variant in SETUP["variant_seeds"]:
        return SETUP["variant_seeds"][variant]
    return SETUP["seeds"] if registry.get(variant).seeded else SETUP["seeds"][:1]


def fitted_variants(fit=None):
    """The setup's variants whose editors have a fitting job (of kind ``fit``, if given)."""
    baselines = SETUP["baselines"]
    names = {registry.get(v).checkpoint_under(baselines) for v in SETUP["variants"]} - {
        None
    }
    return sorted(
        n for n in names if fit is None or registry.get(n).fit_under(baselines) == fit
    )


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
    """``path`` (a rule's output) for every model, dataset, variant and its seeds of the setup."""
    variants = SETUP["variants"] if variants is None else variants
    return [
        out
        for variant in variants
        for out in expand(
            path,
            model=SETUP["models"],
            dataset=SETUP["datasets"],
            variant=variant,
            seed=seeds_of(variant),
        )
    ]


def long_runs(path):
    """``path`` for every run of the setup's long stream (none without one)."""
    stream = SETUP["long_stream"]
    if not stream:
        return []
    return expand(
        path,
        model=SETUP["models"],
        dataset=stream["datasets"],
        variant=stream["variants"],
        seed=stream["seeds"],
    )
