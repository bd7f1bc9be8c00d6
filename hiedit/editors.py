"""Build the editor a variant names: HiEdit's networks or a baseline editor (see hiedit.registry)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
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
    hyperparameter section and, where it needs one, the fitted statistic in ``stats``. A
    baseline whose section has a ``search`` is built with the values that search chose, read
    from ``checkpoint`` (:mod:`hiedit.baselines.tuning`); one without a search takes none.
    """
    from hiedit.baselines.tuning import split_search, tuned_section

    spec = job.variant_spec
    if spec.family == "hiedit":
        from hiedit.editor import load_editor

        return load_editor(job, model, tokenizer, checkpoint)
    if spec.stats is not None and stats is None:
        raise ConfigError(f"variant {spec.name!r} needs its fitted statistic ({spec.stats})")
    where = f"baselines.{spec.baseline}"
    section, search = split_search(job.baselines[spec.baseline])
    if search and checkpoint is None:
        raise ConfigError(
            f"variant {spec.name!r}: {where}.search is set, so the variant is evaluated with the "
            "values its search chose: give the search's output (python -m hiedit train) as "
            "--checkpoint"
        )
    if checkpoint is not None:
        if not search:
            raise ConfigError(
                f"variant {spec.name!r}: {where} has no search, so there is no fitted output to "
                f"evaluate it with; got checkpoint {checkpoint}"
            )
        section = tuned_section(job, checkpoint)
    module = importlib.import_module(spec.builder)
    loaded = module.load_stats(stats) if stats is not None else None
    return build_baseline(job, section, model, tokenizer, loaded)


def build_baseline(
    job: JobConfig, section: Mapping[str, Any], model, tokenizer, stats: Any = None
) -> Any:
    """The job's baseline editor with hyperparameters ``section`` (no ``search`` key) and the
    already loaded fitted statistic ``stats``."""
    spec = job.variant_spec
    module = importlib.import_module(spec.builder)
    where = f"baselines.{spec.baseline}"
    settings = module.CONFIG.from_mapping(section, where)
    # Editors that choose their own modules per model (MEMIT's and AlphaEdit's layer tables)
    # say so with ``module_names(model_name, where)``; the others edit the model's candidates.
    choose = getattr(settings, "module_names", None)
    names = choose(job.model_name, where) if choose else job.module_names
    return module.build(
        settings,
        model,
        tokenizer,
        module_names=names,
        seed=job.seed,
        stats=stats,
    )
