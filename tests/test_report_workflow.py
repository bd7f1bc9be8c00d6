"""The report stage in Snakemake: its rules on synthetic upstream files, and the smoke setup end to end."""

from __future__ import annotations

import math
import random
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_report import synthetic_metrics
from workflow_helpers import ROOT, copy_workflow, run_snakemake

from hiedit.validation_metrics import LOGGED_METRICS

# Targets that need only the evaluation and training outputs (not the kernel benchmark).
RESULT_TARGETS = ["main_table", "ablations", "claims", "curves", "timing"]
SMOKE_MODULES = [
    "model.layers.1.mlp.gate_proj",
    "model.layers.2.mlp.gate_proj",
    "model.layers.2.mlp.up_proj",
    "model.layers.3.mlp.up_proj",
]

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def snakemake(
    workdir: Path, *args: str, targets: list[str] = (), timeout: int = 1800
) -> subprocess.CompletedProcess:
    result = run_snakemake(
        [*targets, "--config", "setup=smoke", *args], cwd=workdir, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return result


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    snakefile = (ROOT / "Snakefile").read_text()
    assert 'include: "workflow/rules/report.smk"' in snakefile, (
        "the Snakefile does not include the report rules"
    )
    return copy_workflow(tmp_path)


def upstream_outputs(workdir: Path) -> list[str]:
    """Every file the smoke DAG produces up to the metrics table (from a dry run)."""
    result = snakemake(workdir, "-n", "--until", "gather_metrics")
    files = set()
    for line in result.stdout.splitlines():
        if line.strip().startswith("output:"):
            files.update(f.strip() for f in line.split("output:", 1)[1].split(","))
    return sorted(files)


def write_synthetic_upstream(workdir: Path, files: list[str]) -> None:
    """Schema-correct stand-ins for the training and evaluation outputs, oldest first."""
    rng = random.Random(0)

    # Dependency order of the upstream stages; anything else (e.g. per-job configs) sits
    # between the raw data and the editors.
    order = {"results/data/geofacts/": 0, "results/editors/": 2, "results/eval/": 3}
    order["results/tables/"] = 4

    def stage(path: str) -> int:
        return next((i for prefix, i in order.items() if path.startswith(prefix)), 1)

    variants = sorted({Path(f).parts[-3] for f in files if f.endswith("per_edit.csv")})
    for current in range(5):
        for name in (f for f in files if stage(f) == current):
            path = workdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith("train_log.csv"):
                steps = range(6)
                pd.DataFrame(
                    {"step": steps, "loss": [math.exp(-s / 2) + 0.1 * rng.random() for s in steps]}
                ).to_csv(path, index=False)
            elif name.endswith("per_edit.csv"):
                rows = [
                    {
                        "index": i,
                        "record_id": f"r{i}",
                        "relation": rng.choice(["capital", "currency"]),
                        "selected": ";".join(rng.sample(SMOKE_MODULES, 2)),
                        "seconds": rng.uniform(0.001, 0.01),
                        "wall_seconds": rng.uniform(0.01, 0.02),
                        "rss_mib": rng.uniform(400.0, 420.0),
                    }
                    for i in range(12)
                ]
                pd.DataFrame(rows).to_csv(path, index=False)
            elif name.endswith("validation.csv"):
                write_validation(path, Path(name).parts[-3], rng)
            elif name == "results/tables/metrics.csv":
                runs = [Path(f).parts for f in files if f.endswith("per_edit.csv")]
                synthetic_metrics(
                    models=sorted({parts[-5] for parts in runs}),
                    datasets=sorted({parts[-4] for parts in runs}),
                    variants=variants,
                    seeds=(0,),
                ).to_csv(path, index=False)
            else:
                path.write_text("synthetic test input\n")
        # Newer than the previous stage, so only the report jobs are out of date.
        time.sleep(1.1)


VALIDATION_METRICS = list(LOGGED_METRICS)


def write_validation(path: Path, variant: str, rng: random.Random) -> None:
    """A trained editor's validations, or the step-size search's candidates for tuned-step."""
    n = 4
    if variant == "tuned-step":
        frame = pd.DataFrame({"candidate": range(n), "phase": "grid"})
    else:
        frame = pd.DataFrame({"trajectory": [2 * i for i in range(n)]})
    frame["score"] = [rng.random() for _ in range(n)]
    for metric in VALIDATION_METRICS:
        frame[metric] = [rng.random() for _ in range(n)]
    frame.to_csv(path, index=False)


def report_members(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as handle:
        return handle.namelist()


def test_report_rules_on_synthetic_upstream_files(workflow_copy):
    write_synthetic_upstream(workflow_copy, upstream_outputs(workflow_copy))
    run = ("--cores", "2", "--rerun-triggers", "mtime")
    snakemake(workflow_copy, *run, targets=RESULT_TARGETS)
    report = workflow_copy / "report.zip"
    snakemake(workflow_copy, *run, "--report", str(report), targets=RESULT_TARGETS)
    members = report_members(report)
    names = {Path(m).name for m in members}
    assert {"geofacts-zsre.csv", "geofacts-zsre.html", "geofacts-counterfact.png"} <= names
    assert {"figure1_k_sweep.png", "figure2_learning_curves.png", "figure4_edit_time.png"} <= names
    assert {"figure5_training_curves.png", "figure7_validation_curves.png"} <= names
    assert {"claims.csv", "claims.html", "figure7_validation_curves.csv"} <= names
    claims = pd.read_csv(workflow_copy / "results/report/claims.csv")
    assert set(claims["Dataset"]) == {"geofacts-zsre", "geofacts-counterfact"}
    # Only the ZsRE-format dataset carries the efficacy/retention targets.
    targets = claims[claims["Comparison"] == "hiedit Efficacy − 60"]
    assert set(targets["Dataset"]) == {"geofacts-zsre"}
    assert set(targets["Model"]) == set(claims["Model"])
    table1 = pd.read_csv(workflow_copy / "results/report/table1/tiny-llama/geofacts-zsre.csv")
    assert table1["Time per edit (ms)"].iloc[1] != "—"
    assert table1["Peak RSS (MiB)"].iloc[1] != "—"
    page = next(m for m in members if m.endswith("report.html"))
    with zipfile.ZipFile(report) as handle:
        html = handle.read(page).decode()
    assert "System Message" not in html  # every caption is valid reStructuredText
    assert "Table 1 \\u2014 main results on tiny-llama / geofacts-zsre" in html


def with_long_stream(workdir: Path, final_sample: int = 0) -> None:
    """Give the copied smoke setup a long stream of 40 edits for hiedit and rledit."""
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["setups"]["smoke"]["long_stream"] = {
        "datasets": ["geofacts-zsre"],
        "variants": ["hiedit", "rledit"],
        "seeds": [0],
        "n_edits": 40,
        **({"final_sample": final_sample} if final_sample else {}),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_long_stream_target_lists_its_runs_and_figure(workflow_copy):
    # Without a long stream in the setup the target is empty.
    dry = snakemake(workflow_copy, "-n", targets=["long_stream"])
    assert "evaluate_long" not in dry.stdout
    with_long_stream(workflow_copy)
    dry = snakemake(workflow_copy, "-n", "-p", targets=["long_stream"])
    jobs = re.search(r"^evaluate_long\s+(\d+)$", dry.stdout, re.M)
    models = yaml.safe_load((workflow_copy / "config.yaml").read_text())["setups"]["smoke"][
        "models"
    ]
    assert jobs and int(jobs[1]) == 2 * len(models), dry.stdout[-2000:]  # hiedit and rledit
    # 40 edits: windows of 4 (at least ten windows).
    assert "report long-stream" in dry.stdout and "--window 4 " in dry.stdout
    assert "score_unedited" in dry.stdout and " --unedited " in dry.stdout
    # The default target leaves the long stream out.
    assert "evaluate_long" not in snakemake(workflow_copy, "-n").stdout
    # With a final sample each long job scores the unedited model on its own sample.
    with_long_stream(workflow_copy, final_sample=10)
    dry = snakemake(workflow_copy, "-n", "-p", targets=["long_stream"])
    assert "evaluate_long" in dry.stdout
    assert "score_unedited" not in dry.stdout and " --unedited " not in dry.stdout


def test_smoke_setup_builds_the_report(workflow_copy):
    with_long_stream(workflow_copy, final_sample=10)
    # Minutes on an idle machine; the cap leaves room for two cores shared with other work.
    snakemake(workflow_copy, "--cores", "2", targets=["all", "long_stream"], timeout=5400)
    report = workflow_copy / "report.zip"
    snakemake(workflow_copy, "--report", str(report), targets=["all", "long_stream"])
    names = {Path(m).name for m in report_members(report)}
    assert {"figure1_k_sweep.png", "figure6_kernel_benchmark.png", "geofacts-zsre.csv"} <= names
    assert {"claims.html", "figure7_validation_curves.png", "figure8_long_stream.png"} <= names
    summary = pd.read_csv(workflow_copy / "results/report/figure8_long_stream.csv")
    assert set(summary["variant"]) == {"hiedit", "rledit"}
    assert (summary["n_windows"] >= 9).all()
