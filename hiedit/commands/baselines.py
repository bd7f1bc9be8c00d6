"""CLI group ``baselines``: fitted statistics of the baseline editors.

``python -m hiedit baselines fit-stats --run-config JSON_OR_FILE --out FILE`` fits the key
statistic ``C = E[k kᵀ]`` (:mod:`hiedit.baselines.key_stats`) of the down-projections that MEMIT
and AlphaEdit edit on the run configuration's model and writes ``FILE`` with a JSON sidecar
(``FILE`` with the suffix ``.json``): source and version of the text, documents, tokens, sha256 of
the text and of the tensor file, the modules. The run configuration needs ``model_name``,
``model`` (a ``models`` entry) and ``baselines`` with a ``key_stats`` section, and names the
modules by a ``modules`` list, or by ``memit``/``alphaedit`` sections whose ``layers`` (and
every ``layers`` candidate of their ``search`` grids) name them: their union is fitted. Or give
the modules with ``--modules``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

from hiedit.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baselines",
        help="fitted statistics of the baseline editors",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit-stats", help="fit MEMIT/AlphaEdit's key statistic for one model")
    fit.add_argument("--run-config", required=True, help="a JSON string or a JSON/YAML file")
    fit.add_argument("--out", required=True, help="tensor file to write (and FILE.json beside it)")
    fit.add_argument("--modules", nargs="+", help="module names (default: from the layers)")
    fit.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    fit.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.set_defaults(func=_fit_stats)


def stats_modules(job: Mapping[str, Any]) -> list[str]:
    """The union of the modules MEMIT and AlphaEdit edit on the job's model, under their
    sections and every combination of their ``search`` grids, in layer order."""
    from hiedit.baselines.alphaedit import AlphaEditConfig
    from hiedit.baselines.memit import MEMITConfig
    from hiedit.baselines.tuning import combinations, section_keys, split_search

    sections = job.get("baselines") or {}
    model_name = str(job["model_name"])
    placed: dict[str, int] = {}
    for key, cls in (("memit", MEMITConfig), ("alphaedit", AlphaEditConfig)):
        if key in sections:
            where = f"baselines.{key}"
            found = combinations(
                sections[key], known=section_keys(cls), where=where, model_name=model_name
            )
            variants = [c.section for c in found] or [split_search(sections[key])[0]]
            for values in variants:
                settings = cls.from_mapping(values, where)
                names = settings.module_names(model_name, where)
                placed.update(zip(names, settings.layers[model_name], strict=True))
    if not placed:
        raise ConfigError(
            "--run-config: no baselines.memit or baselines.alphaedit section names the modules "
            "(or pass --modules)"
        )
    return sorted(placed, key=lambda name: (placed[name], name))


def read_stats_config(value: str) -> dict[str, Any]:
    """``--run-config``: a JSON string, or a JSON/YAML file (a model's entry, not a whole job)."""
    import json
    from pathlib import Path

    import yaml

    text, source = value.strip(), "--run-config"
    if not text.startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"--run-config {value!r}: neither JSON nor an existing file")
        text, source = path.read_text(), str(path)
    try:
        job = yaml.safe_load(text) if source.endswith((".yaml", ".yml")) else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{source}: not valid JSON/YAML: {err}") from err
    if not isinstance(job, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {type(job).__name__}")
    return dict(job)


def _fit_stats(args: argparse.Namespace) -> int:
    import torch

    from hiedit.baselines.key_stats import KeyStatsConfig, fit_key_stats, save_key_stats
    from hiedit.models import load_model

    job = read_stats_config(args.run_config)
    for key in ("model_name", "model"):
        if key not in job:
            raise ConfigError(f"--run-config: key {key!r} is missing")
    sections = job.get("baselines") or {}
    if "key_stats" not in sections:
        raise ConfigError("--run-config: the section 'baselines.key_stats' is missing")
    cfg = KeyStatsConfig.from_mapping(sections["key_stats"])
    if args.modules:
        modules = list(args.modules)
    elif job.get("modules"):
        modules = [str(name) for name in job["modules"]]
    else:
        modules = stats_modules(job)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(job["model"], device=device)
    stats = fit_key_stats(
        model,
        tokenizer,
        modules,
        cfg,
        model_name=str(job["model_name"]),
        progress=not args.no_progress,
    )
    path = save_key_stats(stats, args.out)
    log.info("wrote %s (%d tokens, sha256 %s)", path, stats.info["tokens"], stats.sha256)
    return 0
