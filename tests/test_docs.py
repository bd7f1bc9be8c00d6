"""The documentation the code relies on: every "docs/method.md §N" reference resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/method\.md §(\d+(?:\.\d+)?)(?:-§(\d+(?:\.\d+)?))?")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.M)


def _sources():
    for folder in ("hiedit", "lowrank_kernels", "benchmarks", "workflow", "tests"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".smk", ".yaml", ".rst"} and "__pycache__" not in path.parts:
                yield path
    yield ROOT / "README.md"
    yield ROOT / "Snakefile"


def test_every_method_reference_names_a_section():
    sections = set(HEADING.findall((ROOT / "docs/method.md").read_text()))
    assert {"1", "1.2", "2.4", "5", "8", "9"} <= sections
    cited, missing = 0, []
    for path in _sources():
        for match in REFERENCE.finditer(path.read_text(errors="ignore")):
            for number in filter(None, match.groups()):
                cited += 1
                if number not in sections:
                    missing.append(f"{path.relative_to(ROOT)}: §{number}")
    assert cited >= 15 and missing == []


def test_extending_guide_names_files_that_exist():
    text = (ROOT / "docs/extending.md").read_text()
    paths = set(re.findall(r"`((?:hiedit|tests|docs)/[\w/.]+\.(?:py|yaml|md))", text))
    assert paths, "the guide names the files to touch"
    assert [p for p in paths if not (ROOT / p).exists()] == []
