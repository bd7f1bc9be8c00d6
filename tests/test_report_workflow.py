"""The report stage in Snakemake: its rules on synthetic upstream files, and the smoke setup end to end."""

from __future__ import annotations

import math
import random
import subprocess
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from test_report import synthetic_metrics
from workflow_helpers import ROOT, copy_workflow, run_snakemake

# Targets that need only the evaluation and training outputs (not the kernel benchmark).
RESULT_TARGETS = ["main_table", "ablations", "curves", "timing"]
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
                    }
                    for i in range(12)
                ]
                pd.DataFrame(rows).to_csv(path, index=False)
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
    assert "figure5_training_curves.png" in names
    page = next(m for m in members if m.endswith("report.html"))
    with zipfile.ZipFile(report) as handle:
        html = handle.read(page).decode()
    assert "System Message" not in html  # every caption is valid reStructuredText
    assert "Table 1 \\u2014 main results on tiny-llama / geofacts-zsre" in html


def test_smoke_setup_builds_the_report(workflow_copy):
    snakemake(workflow_copy, "--cores", "2")
    report = workflow_copy / "report.zip"
    snakemake(workflow_copy, "--report", str(report))
    names = {Path(m).name for m in report_members(report)}
    assert {"figure1_k_sweep.png", "figure6_kernel_benchmark.png", "geofacts-zsre.csv"} <= names
