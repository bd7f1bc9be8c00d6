"""What a result was produced with: library versions, Python, platform, device name and seeds.

Written as ``runinfo.json`` next to every metrics file so that a number can be traced to the
software and hardware that produced it.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from hiedit.data.geofacts import SOURCE_PACKAGES

# With the packages the embedded geofacts are built from.
LIBRARIES = (
    "torch",
    "transformers",
    "triton",
    "tokenizers",
    "numpy",
    "pandas",
    "hiedit",
    *SOURCE_PACKAGES,
)


def library_version(name: str) -> str | None:
    """The installed distribution's version, ``None`` when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "hiedit":
            # Running from a source tree that was never installed.
            import hiedit

            return hiedit.__version__
        return None


def source_revision() -> dict[str, Any] | None:
    """The git commit of the source tree the package runs from, and whether it had local
    changes (``None`` outside a git checkout, e.g. an installed wheel)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    changes = git(
        "status", "--porcelain", "--untracked-files=no", "--", "hiedit", "lowrank_kernels"
    )
    return {"commit": commit, "local_changes": bool(changes)}


def cpu_name() -> str:
    """A human-readable CPU model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: Any) -> dict[str, Any]:
    """Type and name of ``device`` (a ``torch.device`` or string), with thread/GPU details."""
    import torch

    device = torch.device(device)
    info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    else:
        info["name"] = cpu_name()
    info["torch_threads"] = torch.get_num_threads()
    return info


def collect_runinfo(
    *, seeds: Mapping[str, int], device: Any, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``runinfo.json`` content: versions, Python, platform, device, seeds and ``extra``."""
    info: dict[str, Any] = {
        "versions": {name: library_version(name) for name in LIBRARIES},
        "source": source_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_info(device),
        "seeds": {key: int(value) for key, value in seeds.items()},
    }
    if extra:
        info.update(extra)
    return info
