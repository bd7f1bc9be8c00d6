"""Build the editor a variant names: HiEdit's networks or a baseline editor (see hiedit.registry)."""

from __future__ import annotations

import importlib
import os
from typing import Any

from hiedit.config import JobConfig
from hiedit.errors import ConfigError


def build_editor(
    job: JobConfig,
    model,
    tokenizer,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    stats: str | os.PathLike[str] | None = None,
) -> Any:
    """The job's editor, ready for :func:`hiedit.evaluation.stream.run_stream`.

    HiEdit-family variants load their fitted networks from ``checkpoint`` (``None``: seeded
    untrained networks); a baseline is built by the function its registry entry names, with its
    hyperparameter section and, where it needs one, the fitted statistic in ``stats``.
    """
    spec = job.variant_spec
    if spec.family == "hiedit":
        from hiedit.editor import load_editor

        return load_editor(job, model, tokenizer, checkpoint)
    if spec.stats is not None and stats is None:
        raise ConfigError(f"variant {spec.name!r} needs its fitted statistic ({spec.stats})")
    module = importlib.import_module(spec.builder)
    settings = module.CONFIG.from_mapping(
        job.baselines[spec.baseline], f"baselines.{spec.baseline}"
    )
    loaded = module.load_stats(stats) if stats is not None else None
    # Editors that choose their own modules per model (MEMIT's and AlphaEdit's layer tables)
    # say so with ``module_names(model_name, where)``; the others edit the model's candidates.
    choose = getattr(settings, "module_names", None)
    names = choose(job.model_name, f"baselines.{spec.baseline}") if choose else job.module_names
    return module.build(
        settings,
        model,
        tokenizer,
        module_names=names,
        seed=job.seed,
        stats=loaded,
    )
