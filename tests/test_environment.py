"""The rules' conda environment (envs/hiedit.yaml) and the conda profile.

`snakemake --use-conda` creates the environment from a copy of envs/hiedit.yaml in
.snakemake/conda/, and conda runs its pip part from the directory of that copy; the rules then run
the project from the workflow's checkout. What is checked here:

- the file names nothing by path (a path would resolve against the copy's directory);
- its pip pins lie within pyproject.toml's ranges, and it lists every runtime dependency the
  project, its kernels and its benchmark scripts import;
- (network) every pip pin is published on PyPI as a wheel for the environment's Python on Linux
  x86-64, and the pins satisfy each other's requirements there. The conda part (python=3.11 and
  pip from conda-forge) is not checked against conda-forge: no conda channel is reachable from CI;
  it is checked only to be a Python minor series within pyproject.toml's requires-python, the one
  the PyPI checks ask wheels for;
- (slow, network) a stand-in for conda: a fresh virtual environment gets exactly the pip part, the
  way conda's pip installer installs it (a requirements file beside the copy, run from there), and
  the workflow's rules from data to the main table run in it, first on PATH, with the project not
  installed there.
"""

from __future__ import annotations

import ast
import csv
import email.message
import email.parser
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging import tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from workflow_helpers import ROOT, copy_workflow, run_snakemake

ENV_FILE = ROOT / "envs" / "hiedit.yaml"
# Snakemake runs the rules and is not imported by them (test_rules_do_not_import_snakemake).
NOT_IN_RULE_ENV = {"snakemake"}
# What the rules run: the package, the kernels and the benchmark scripts.
RULE_SOURCES = ("hiedit", "lowrank_kernels", "benchmarks")
FIRST_PARTY = {"hiedit", "lowrank_kernels"}
# A conda package spec by name (optionally name=version): no channel, path or URL.
CONDA_SPEC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(=[0-9][0-9A-Za-z_.*]*)?")
CHANNEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def load_env(path: Path = ENV_FILE) -> tuple[list[str], list[str], list[str]]:
    """``(channels, conda specs, pip entries)`` of an environment file."""
    env = yaml.safe_load(path.read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip_sections) == 1, f"{path}: expected one pip section, found {len(pip_sections)}"
    return env.get("channels", []), conda, pip_sections[0]


def path_entries(channels: list[str], conda: list[str], pip: list[str]) -> list[str]:
    """Entries that name a path, a URL or a pip option rather than a package."""
    found = [c for c in channels if not CHANNEL.fullmatch(c)]
    found += [c for c in conda if not CONDA_SPEC.fullmatch(c)]
    for entry in pip:
        try:
            if Requirement(entry).url is not None:
                found.append(entry)
        except InvalidRequirement:  # -e .., ., ../x, -r file, file:..
            found.append(entry)
    return found


def pins(pip: list[str]) -> dict[str, Requirement]:
    """The pip entries by distribution name (each must be a plain requirement)."""
    found = {}
    for entry in pip:
        try:
            requirement = Requirement(entry)
        except InvalidRequirement as error:
            raise AssertionError(f"{ENV_FILE.name}: pip entry {entry!r}: {error}") from None
        found[canonicalize_name(requirement.name)] = requirement
    return found


def pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"{ENV_FILE.name}: {requirement} is not pinned with =="
    return spec.version


def python_minor(conda: list[str]) -> str:
    (python,) = [c for c in conda if c.split("=")[0] == "python"]
    assert re.fullmatch(r"python=3\.\d+", python), f"{ENV_FILE.name}: {python!r}"
    return python.split("=")[1]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def imported_modules() -> dict[str, str]:
    """Third-party top-level modules the rule sources import, each with one file importing it."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found = {}
    for folder in RULE_SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in stdlib | FIRST_PARTY:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_environment_file_names_nothing_by_path():
    channels, conda, pip = load_env()
    assert path_entries(channels, conda, pip) == []
    # What the check is for: the entries that broke environment creation, and their kin.
    bad_pip = ["-e ..", "-e .", ".", "..", "../hiedit", "./", "file:..", "hiedit @ file:///src"]
    bad_pip += ["-r ../requirements.txt", "--editable=.."]
    assert path_entries(["./channel", "file:///ch"], ["./pkg.conda"], bad_pip) == [
        "./channel",
        "file:///ch",
        "./pkg.conda",
        *bad_pip,
    ]


def test_pip_pins_lie_in_pyproject_ranges():
    project = pyproject()
    required = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    pinned = pins(load_env()[2])
    missing = sorted(set(required) - NOT_IN_RULE_ENV - set(pinned))
    extra = sorted(set(pinned) - set(required))
    assert (missing, extra) == ([], []), (
        f"{ENV_FILE.name}: missing {missing}, not in pyproject {extra}"
    )
    for name, pin in pinned.items():
        version = pinned_version(pin)
        assert required[name].specifier.contains(version, prereleases=True), (
            f"{ENV_FILE.name}: {pin} is outside pyproject.toml's {required[name]}"
        )
        assert str(pin.marker) == str(required[name].marker), (pin, required[name])
    python = python_minor(load_env()[1])
    assert SpecifierSet(project["requires-python"]).contains(f"{python}.0"), python


def test_rule_environment_holds_every_imported_distribution():
    by_module = metadata.packages_distributions()
    pinned = set(pins(load_env()[2]))
    missing = []
    for module, where in imported_modules().items():
        # A module not installed here is taken to be its own distribution's name.
        names = {canonicalize_name(d) for d in by_module.get(module, [module])}
        if not names & pinned:
            missing.append(f"{module} (imported in {where})")
    assert missing == []


def test_rules_do_not_import_snakemake():
    assert "snakemake" not in imported_modules()


def test_conda_profile_keeps_the_default_profile_settings():
    default = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    conda = yaml.safe_load((ROOT / "profiles/conda/config.yaml").read_text())
    # --workflow-profile profiles/conda replaces profiles/default: the GPU limit must be repeated.
    assert {k: conda.get(k) for k in default} == default
    assert conda["software-deployment-method"] == "conda"


@pytest.mark.workflow
def test_snakemake_accepts_the_conda_profile(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    args = ["--workflow-profile", "profiles/conda", "-n", "--config", "setup=smoke"]
    result = run_snakemake(args, checkout, 300)
    output = result.stdout + result.stderr
    if shutil.which("conda"):
        assert result.returncode == 0, output[-3000:]
    else:
        # Every profile key was understood and the DAG was being built when conda was looked for.
        assert result.returncode != 0 and "Building DAG of jobs" in output, output[-3000:]
        assert "Error running conda info" in output, output[-3000:]


# The wheel tags a glibc 2.28 Linux x86-64 machine installs (torch's own wheels need 2.28); pip
# takes each --platform literally, so the older manylinux tags are listed too.
LINUX_TAGS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)]
LINUX_TAGS += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def pypi_environment() -> dict[str, str]:
    """pip's environment with this machine's index settings left out: PyPI alone answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.network
@pytest.mark.slow
def test_every_pip_pin_is_published_on_pypi():
    _, conda, pip = load_env()
    python = python_minor(conda)
    missing = []
    for name, pin in pins(pip).items():
        if pin.marker is not None and not pin.marker.evaluate({"sys_platform": "linux"}):
            continue
        command = [sys.executable, "-m", "pip", "index", "versions", name, "--json"]
        command += ["--index-url", "https://pypi.org/simple", "--python-version", python]
        command += [arg for tag in LINUX_TAGS for arg in ("--platform", tag)]
        command += ["--only-binary=:all:"]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, env=pypi_environment()
        )
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        if pinned_version(pin) not in json.loads(result.stdout)["versions"]:
            missing.append(str(pin))
    assert missing == [], f"no wheel on PyPI for Python {python} on Linux x86-64: {missing}"


# Marker values of the machine the check above targets (CPython 3.11 on Linux x86-64).
LINUX_MARKERS = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


class RemoteFile(io.RawIOBase):
    """A file on the index read by HTTP range requests, so that ``zipfile`` fetches a wheel's
    directory and METADATA only (the index here does not always serve PEP 658 metadata)."""

    def __init__(self, url: str, size: int):
        self.url, self.size, self.position = url, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def readinto(self, buffer) -> int:
        end = min(self.position + len(buffer), self.size)
        if end <= self.position:
            return 0
        request = urllib.request.Request(
            self.url, headers={"Range": f"bytes={self.position}-{end - 1}"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def wheel_metadata(name: str, version: str, python: str) -> email.message.Message:
    """METADATA of a PyPI wheel of ``name==version`` that CPython ``python`` on Linux installs."""
    major, minor = map(int, python.split("."))
    wanted = set(tags.cpython_tags((major, minor), platforms=LINUX_TAGS))
    wanted |= set(tags.compatible_tags((major, minor), f"cp{major}{minor}", LINUX_TAGS))
    request = urllib.request.Request(
        f"https://pypi.org/simple/{name}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        files = json.load(response)["files"]
    for file in files:
        if not file["filename"].endswith(".whl"):
            continue
        _, wheel_version, _, wheel_tags = parse_wheel_filename(file["filename"])
        if str(wheel_version) == version and wheel_tags & wanted:
            raw = io.BufferedReader(RemoteFile(file["url"], file["size"]), buffer_size=1 << 16)
            with zipfile.ZipFile(raw) as wheel:
                member = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
                return email.parser.BytesParser().parsebytes(wheel.read(member))
    raise AssertionError(f"no PyPI wheel of {name}=={version} for Python {python} on Linux")


@pytest.mark.network
@pytest.mark.slow
def test_pip_pins_satisfy_each_others_requirements_on_linux():
    """What pip's resolver would refuse on Linux x86-64, from the pinned wheels' own METADATA:
    e.g. PyPI's torch wheel pins its triton, which the CPU build installed in CI does not."""
    _, conda, pip = load_env()
    python = python_minor(conda)
    markers = {**LINUX_MARKERS, "python_version": python, "python_full_version": f"{python}.0"}
    pinned = {n: p for n, p in pins(pip).items() if p.marker is None or p.marker.evaluate(markers)}
    versions = {name: pinned_version(pin) for name, pin in pinned.items()}
    conflicts = []
    for name, version in versions.items():
        for line in wheel_metadata(name, version, python).get_all("Requires-Dist") or []:
            needed = Requirement(line)
            other = canonicalize_name(needed.name)
            if other in versions and (needed.marker is None or needed.marker.evaluate(markers)):
                if not needed.specifier.contains(versions[other], prereleases=True):
                    conflicts.append(
                        f"{name}=={version} requires {needed}, pinned {versions[other]}"
                    )
    assert conflicts == []


def copy_checkout(dest: Path) -> Path:
    """What a clone holds for a workflow run: the workflow files and the package sources."""
    dest.mkdir()
    copy_workflow(dest)  # the workflow's copy carries the package sources too
    missing = sorted(name for name in FIRST_PARTY if not (dest / name).is_dir())
    assert missing == [], f"the workflow copy lacks the first-party packages {missing}"
    return dest


def install_pip_part(prefix: Path, env_copy: Path) -> None:
    """A fresh environment at ``prefix`` with the pip part of ``env_copy``, installed as conda's
    pip installer does: the entries written to a requirements file in the copy's directory and
    ``pip install -U -r`` run there (pip's index settings and cache as configured)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--upgrade-deps", str(prefix)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    requirements = env_copy.with_suffix(".requirements.txt")
    requirements.write_text("\n".join(load_env(env_copy)[2]))
    result = subprocess.run(
        [prefix / "bin/python", "-m", "pip", "install", "-U", "-r", requirements.name],
        cwd=env_copy.parent,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.workflow
def test_rules_run_in_a_fresh_environment_of_the_pip_part(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    # Where Snakemake puts its copy: outside the checkout's root, as .snakemake/conda/ is.
    env_copy = tmp_path / "conda" / "0123abcd.yaml"
    env_copy.parent.mkdir()
    shutil.copy(ENV_FILE, env_copy)
    prefix = tmp_path / "env"
    install_pip_part(prefix, env_copy)

    interpreter_dir = os.path.dirname(sys.executable)
    path = [str(prefix / "bin")]
    path += [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != interpreter_dir]
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(PATH=os.pathsep.join(path), VIRTUAL_ENV=str(prefix), PYTHONNOUSERSITE="1")
    absent = subprocess.run(
        ["python", "-c", "import importlib.util as u; print(u.find_spec('hiedit'))"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert absent.stdout.strip() == "None", absent.stdout + absent.stderr

    # One dataset, a trained and an untrained variant: data, train, evaluate, gather, Table 1;
    # no validation slice, the shortest training run.
    short = {
        "datasets": ["geofacts-zsre"],
        "variants": ["hiedit", "hiedit-untrained"],
        "k_sweep": [],
        "overrides": {"training": {"validation_size": 0}},
    }
    setups = "setups=" + yaml.safe_dump({"smoke": short}, default_flow_style=True, width=1000)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "main_table", "--cores", "2"]
        + ["--config", "setup=smoke", setups.strip()],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    failed_logs = [
        f"{log.relative_to(checkout)}:\n{log.read_text()[-2000:]}"
        for log in sorted((checkout / "results/logs").rglob("*.log"))
        if "rror" in log.read_text()
    ]
    assert result.returncode == 0, "\n".join([result.stderr[-4000:], *failed_logs])
    for rule in ("build_geofacts", "prepare_data", "train_editor", "evaluate", "gather_metrics"):
        assert f"rule {rule}:" in result.stdout + result.stderr, rule
    with open(checkout / "results/report/table1/tiny-llama/geofacts-zsre.csv", newline="") as f:
        variants = {row["Variant"] for row in csv.DictReader(f)}
    assert {"hiedit", "hiedit-untrained"} <= variants
    # The evaluation ran with the environment's libraries, not those of the interpreter here.
    run = checkout / "results/eval/tiny-llama/geofacts-zsre/hiedit/seed0/runinfo.json"
    versions = json.loads(run.read_text())["versions"]
    expected = {n: pinned_version(p) for n, p in pins(load_env()[2]).items() if n in versions}
    if sys.platform != "linux":
        expected.pop("triton", None)
    assert {n: versions[n].split("+")[0] for n in expected} == expected


def test_no_repository_folder_shadows_an_installed_distribution():
    """A package folder at the repository root is first on ``sys.path`` whenever a rule runs
    ``python -m hiedit`` from the checkout: one named like another distribution's import package
    (Hugging Face's ``kernels``, which transformers >= 5.25 imports) would hide it."""
    owners = metadata.packages_distributions()
    for folder in sorted(p for p in ROOT.iterdir() if (p / "__init__.py").is_file()):
        others = {canonicalize_name(d) for d in owners.get(folder.name, [])} - {"hiedit"}
        assert not others, f"{folder.name}/ shadows the installed distribution(s) {sorted(others)}"


def test_transformers_models_import_from_the_checkout():
    """What every rule does first, run from the repository root as the rules run it."""
    code = "import lowrank_kernels, hiedit; from transformers import LlamaForCausalLM; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
