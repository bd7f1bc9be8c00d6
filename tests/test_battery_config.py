"""Reliability battery, configuration and inputs: every bad value is refused before any work, with
the key, file or job named, and leaves nothing a later run could take for a result.

Pure validation cases go through ``validate_config``; the cases that only the workflow can see (a
model folder no rule makes, values typed on the command line, the profile) through ``snakemake -n``
on a copy of the workflow; missing input files through the command line.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
from workflow_helpers import ROOT, copy_workflow, run_snakemake

from hiedit.cli import main
from hiedit.config import job_config, load_config, resolve_setup, validate_config
from hiedit.data import QA, EditRecord, write_split
from hiedit.errors import ConfigError


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "config.yaml")


def _set(path: str, value):
    """A mutation that sets ``a.b.c`` (list items as ``[i]``) of the configuration to ``value``."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]

    def mutate(config):
        node = config
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


# (mutation, text the message must hold: the key and what is wrong with it)
BAD_VALUES = [
    pytest.param(
        _set("setup", "nope"),
        "config key 'setup': 'nope' is not one of the setups",
        id="unknown-setup",
    ),
    pytest.param(
        _set("setups.smoke.variants[1]", "hiedit-typo"),
        "config key 'setups.smoke.variants[1]': 'hiedit-typo' is not one of",
        id="unknown-variant",
    ),
    pytest.param(
        _set("setups.smoke.models", ["tiny-lama"]),
        "config key 'setups.smoke.models[0]': 'tiny-lama' is not defined under 'models'",
        id="unknown-model",
    ),
    pytest.param(
        _set("setups.smoke.datasets", ["geofacts"]),
        "config key 'setups.smoke.datasets[0]': 'geofacts' is not defined under 'datasets'",
        id="unknown-dataset",
    ),
    pytest.param(
        _set("models.tiny-llama.k", 5),
        "config key 'models.tiny-llama.k': K = 5 exceeds the 4 candidate modules",
        id="k-above-modules",
    ),
    pytest.param(
        _set("setups.smoke.k_sweep", [1, 5]),
        "config key 'setups.smoke.k_sweep[1]': K = 5 exceeds the 4 modules of tiny-llama",
        id="k-sweep-above-modules",
    ),
    pytest.param(
        _set("models.tiny-llama.k", 0),
        "config key 'models.tiny-llama.k': 0 is less than the minimum of 1",
        id="k-zero",
    ),
    pytest.param(
        _set("evaluation.n_edits", -5),
        "config key 'evaluation.n_edits': -5 is less than the minimum of 1",
        id="negative-n-edits",
    ),
    pytest.param(
        _set("setups.smoke.seeds", [0, -1]),
        "config key 'setups.smoke.seeds[1]': -1 is less than the minimum of 0",
        id="negative-seed",
    ),
    pytest.param(
        _set("setups.smoke.overrides.training.back_depth", -2),
        "config key 'setups.smoke.overrides.training.back_depth': -2 is less than the minimum of 1",
        id="negative-override",
    ),
    pytest.param(
        _set("training.n_trajectories", 2.5),
        "config key 'training.n_trajectories': 2.5 is not of type 'integer'",
        id="fractional-count",
    ),
    # 2.0 is an integer to JSON Schema; the job would refuse it (and a seed 0.0 names no job).
    pytest.param(
        _set("setups.smoke.overrides.training.n_trajectories", 2.0),
        "config key 'setups.smoke.overrides.training.n_trajectories': 2.0 is not of type 'integer'",
        id="float-count",
    ),
    pytest.param(
        _set("setups.smoke.seeds", [0.0]),
        "config key 'setups.smoke.seeds[0]': 0.0 is not of type 'integer'",
        id="float-seed",
    ),
    pytest.param(
        _set("setups.smoke.geofacts_eval", "many"),
        "config key 'setups.smoke.geofacts_eval': 'many' is not of type 'integer'",
        id="string-count",
    ),
    pytest.param(
        _set("editor.rank", "big"),
        "config key 'editor.rank': 'big' is not of type 'integer'",
        id="string-rank",
    ),
    pytest.param(
        _set("editor.lr", "fast"),
        "config key 'editor.lr': 'fast' is not of type 'number'",
        id="string-lr",
    ),
    pytest.param(
        _set("training.intrinsic_reward", "yes"),
        "config key 'training.intrinsic_reward': 'yes' is not of type 'boolean'",
        id="string-bool",
    ),
    pytest.param(
        _set("training.intrinsic_reward", 1),
        "config key 'training.intrinsic_reward': 1 is not of type 'boolean'",
        id="int-bool",
    ),
    pytest.param(
        _set("setups.smoke.variants", "hiedit"),
        "config key 'setups.smoke.variants': 'hiedit' is not of type 'array'",
        id="string-for-list",
    ),
    pytest.param(
        _set("models.tiny-llama.modules", "model.layers.1.mlp.gate_proj"),
        "config key 'models.tiny-llama.modules': 'model.layers.1.mlp.gate_proj' is not of type 'array'",
        id="string-modules",
    ),
    pytest.param(
        _set("datasets.geofacts-zsre.on_malformed", "skip"),
        "config key 'datasets.geofacts-zsre.on_malformed': 'skip' is not one of ['drop', 'fail']",
        id="bad-enum",
    ),
    pytest.param(
        _set("setups.smoke.overrides.editor", 5),
        "config key 'setups.smoke.overrides.editor': 5 is not of type 'object'",
        id="override-not-a-mapping",
    ),
    pytest.param(
        _set("setups.smoke.overrides.training.n_trajectoriess", 3),
        "config key 'setups.smoke.overrides.training': Additional properties are not allowed ('n_trajectoriess' was unexpected)",
        id="unknown-override-key",
    ),
    pytest.param(
        _set("setups.smoke.overrides.evalution", {"n_edits": 3}),
        "config key 'setups.smoke.overrides': Additional properties are not allowed ('evalution' was unexpected)",
        id="unknown-override-section",
    ),
    pytest.param(
        _set("setups.smoke.overrides.baselines", {"ft-n": {"lr": 1e-4}}),
        "config key 'setups.smoke.overrides.baselines.ft-n': no baseline section 'ft-n'",
        id="unknown-override-baseline",
    ),
    pytest.param(
        _set("setups.smoke.overrides.baselines", {"ft-m": {"step": 3}}),
        "config key 'setups.smoke.overrides.baselines.ft-m': Additional properties are not allowed ('step' was unexpected)",
        id="unknown-baseline-key",
    ),
    pytest.param(
        _set("evalution", {"n_edits": 3}),
        "config key '<top level>': Additional properties are not allowed ('evalution' was unexpected)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        lambda c: c["models"]["smollm2-135m"].pop("path"),
        "config key 'models.smollm2-135m.path' is required for source local",
        id="local-model-without-path",
    ),
    pytest.param(
        lambda c: c["datasets"]["zsre"].pop("train_url"),
        "config key 'datasets.zsre.train_url' is required for a downloaded zsre dataset",
        id="download-without-url",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_VALUES)
def test_bad_value_is_refused_naming_the_key(config, mutate, message):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(bad)


def test_whole_valued_floats_are_still_accepted_where_a_number_is_meant(config):
    """Strict integers must not refuse ``lr: 1`` or ``time_decay: 1`` (numbers, not counts)."""
    good = copy.deepcopy(config)
    good["editor"]["lr"] = 1
    good["setups"]["smoke"]["overrides"]["training"]["time_decay"] = 1
    validate_config(good)


# --- through Snakemake ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def dry_run(workdir: Path, *config: str) -> subprocess.CompletedProcess:
    return run_snakemake(["-n", "--config", "setup=smoke", *config], workdir, timeout=300)


LOCAL_MODEL = json.dumps(
    {
        "mine": {
            "source": "local",
            "path": "resources/models/mine",
            "dtype": "float32",
            "modules": ["model.layers.1.mlp.gate_proj", "model.layers.2.mlp.up_proj"],
            "k": 1,
        }
    }
)

WORKFLOW_CASES = [
    pytest.param(
        ["setup=nope"], ["config key 'setup': 'nope' is not one of the setups"], id="unknown-setup"
    ),
    # Snakemake hands nested --config values over as strings: "9" is typed, then refused.
    pytest.param(
        ['models={"tiny-llama": {"k": "9"}}'],
        ["config key 'models.tiny-llama.k': K = 9 exceeds the 4 candidate modules"],
        id="k-above-modules",
    ),
    pytest.param(
        ['evaluation={"n_edits": "five"}'],
        ["config key 'evaluation.n_edits': 'five' is not of type 'integer'"],
        id="non-integer-count",
    ),
    pytest.param(
        ['setups={"smoke": {"overrides": {"training": {"n_trajectoriess": 3}}}}'],
        ["config key 'setups.smoke.overrides.training'", "'n_trajectoriess' was unexpected"],
        id="unknown-override-key",
    ),
    pytest.param(
        ['setups={"smoke": {"variants": ["hiedit", "hiedit-typo"]}}'],
        ["config key 'setups.smoke.variants[1]': 'hiedit-typo' is not one of"],
        id="unknown-variant",
    ),
    # A local model whose folder no rule builds: the job and the folder are named.
    pytest.param(
        [f"models={LOCAL_MODEL}", 'setups={"smoke": {"models": ["mine"]}}'],
        [
            "Missing input files for rule train_editor",
            "wildcards: model=mine",
            "resources/models/mine",
        ],
        id="missing-model-folder",
    ),
]


@pytest.mark.workflow
@pytest.mark.parametrize(("config_args", "messages"), WORKFLOW_CASES)
def test_workflow_refuses_bad_configuration_before_any_job(workflow, config_args, messages):
    result = dry_run(workflow, *config_args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for message in messages:
        assert message in output, output[-3000:]
    assert not (workflow / "results").exists()


@pytest.mark.workflow
def test_dry_run_uses_the_workflow_profile(workflow):
    result = dry_run(workflow)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Using workflow specific profile profiles/default" in output
    # The profile's settings are in force (printshellcmds: the dry run lists the commands).
    assert "python -m hiedit train --run-config" in output


# --- missing input files through the command line ---------------------------------------------


@pytest.fixture(scope="module")
def smoke_job(config, tmp_path_factory) -> Path:
    job = job_config(
        config, resolve_setup(config, "smoke"), "tiny-llama", "geofacts-zsre", "hiedit", 0
    )
    path = tmp_path_factory.mktemp("job") / "job.json"
    path.write_text(json.dumps(job))
    return path


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    records = [
        EditRecord(
            f"r{i}",
            f"City{i}",
            "P17",
            "zsre",
            QA(f"Which country is City{i} in?", "Peru"),
            QA(f"City{i} lies in which country?", "Peru"),
            QA("What is the capital of Chile?", "Santiago"),
        )
        for i in range(4)
    ]
    path = tmp_path_factory.mktemp("data") / "split.parquet"
    write_split(records, path)
    return path


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_missing_raw_dataset_file_is_named_and_nothing_is_prepared(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--format", "zsre", "--seed", "0", "--n-train", "5", "--n-eval", "5"]
    missing = tmp_path / "resources/data/zsre/train.json"
    (tmp_path / "eval.json").write_text("[]")
    code = main(
        [
            "data",
            "prepare",
            *args,
            "--train-input",
            str(missing),
            "--eval-input",
            str(tmp_path / "eval.json"),
            "--out-train",
            str(out / "train.parquet"),
            "--out-eval",
            str(out / "eval.parquet"),
            "--stats",
            str(out / "stats.json"),
        ]
    )
    assert code == 2
    assert f"{missing}: file not found" in capsys.readouterr().err
    assert files_under(out) == []
    assert main(["data", "check", "--format", "zsre", str(missing)]) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err


def test_missing_split_checkpoint_and_model_folder_are_named(smoke_job, split, tmp_path, capsys):
    out = tmp_path / "eval"
    missing_split = tmp_path / "results/data/geofacts-zsre/eval.parquet"
    base = ["evaluate", "--run-config", str(smoke_job), "--out-dir", str(out), "--no-progress"]
    assert main([*base, "--eval-data", str(missing_split), "--untrained"]) == 2
    assert f"{missing_split}: split file not found" in capsys.readouterr().err
    missing_editor = tmp_path / "results/editors/editor.pt"
    assert main([*base, "--eval-data", str(split), "--checkpoint", str(missing_editor)]) == 2
    assert f"--checkpoint {missing_editor}: file not found" in capsys.readouterr().err

    editor = tmp_path / "editors" / "editor.pt"
    train = ["train", "--run-config", str(smoke_job), "--out", str(editor), "--no-progress"]
    assert main([*train, "--train-data", str(missing_split)]) == 2
    assert f"{missing_split}: split file not found" in capsys.readouterr().err

    job = json.loads(smoke_job.read_text())
    folder = tmp_path / "resources/models/mine"
    job["model"] = {**job["model"], "source": "local", "path": str(folder)}
    local_job = tmp_path / "local.json"
    local_job.write_text(json.dumps(job))
    train = ["train", "--run-config", str(local_job), "--out", str(editor), "--no-progress"]
    assert main([*train, "--train-data", str(split)]) == 2
    assert str(folder) in capsys.readouterr().err
    assert files_under(out) == [] and not editor.exists()
    assert not editor.with_name("editor.pt.partial").exists()
