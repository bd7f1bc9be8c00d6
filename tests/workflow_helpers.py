"""Shared by the workflow tests: a copy of the workflow in a temp folder and a Snakemake runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a workflow run needs: the rules run the copied checkout's package (PYTHONPATH), not an
# installed one.
WORKFLOW_FILES = [
    "Snakefile",
    "config.yaml",
    "workflow",
    "profiles",
    "envs",
    "benchmarks",
    "hiedit",
    "lowrank_kernels",
]


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow files into ``dest`` (without byte-code caches) and return ``dest``."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def run_snakemake(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """``python -m snakemake ARGS`` in ``cwd`` with this interpreter's environment first on PATH.

    Rules call ``python -m hiedit``; an activated virtual environment would do the same.
    """
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": path}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
