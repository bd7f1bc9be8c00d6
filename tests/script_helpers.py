"""Running a repository script (a benchmark) as a user would, for the scripts' smoke tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the repository root; fails the test (with the end of its
    stderr) unless it exits 0."""
    run = subprocess.run(
        [sys.executable, script, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run
