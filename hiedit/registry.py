"""The one list of editors the project runs: HiEdit's variants, its ablations and the baselines.

Every consumer reads this registry instead of keeping its own list: the config schema's variant
names (checked by a test), the workflow's DAG (which variants have a training job, which
checkpoint a variant is evaluated with, which need a fitted statistic), the editor (how a variant
selects modules, which parameters train) and the report (order, labels, colours, descriptions,
the paper's row names). Adding an editor means adding one :class:`Variant` here (see
``docs/extending.md``); a baseline editor's entry names its build function in ``builder``.

The module is torch-free so that the Snakefile can import it at parse time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hiedit.errors import ConfigError

# How a HiEdit-family variant picks the modules of an edit at inference.
SELECTIONS = ("learned", "random", "static", "dense")
# How a variant's editor is obtained before the stream: trained over trajectories (train_editor
# rule), a step-size search on the validation slice (same rule), a baseline's grid search over
# its section's `search` on the validation slice (same rule; a section without `search` fits
# nothing), or nothing (built at evaluation).
FITS = ("trajectories", "step_search", "grid_search", None)
SEARCH_KEY = "search"
K_SWEEP_PREFIX = "hiedit-k"
_K_SWEEP = re.compile(rf"^{re.escape(K_SWEEP_PREFIX)}(\d+)$")
EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Variant:
    """What one editor name means everywhere in the project.

    ``family``: ``"hiedit"`` (the project's router and low-level networks, built by
    :class:`hiedit.editor.HiEditor`) or ``"baseline"`` (an editor of :mod:`hiedit.baselines`,
    built by ``builder``).
    ``k``: modules edited per fact: ``"model"`` (the model entry's K), ``"all"`` (every
    candidate: no router) or a fixed number (the K sweep).
    ``fit``: see :data:`FITS`. ``checkpoint``: the variant whose fitted editor this one is
    evaluated with (itself when it is fitted; another variant's for inference-only ablations;
    ``None`` when nothing is fitted). A ``grid_search`` baseline is fitted only under a setup
    whose section for it has a ``search``: ask :meth:`fit_under` / :meth:`checkpoint_under`.
    ``editor_overrides`` / ``training_overrides``: values this variant sets on top of the setup's
    ``editor`` / ``training`` sections (written into its run configuration, so a run file says
    what ran). ``same_edits``: scale ``n_trajectories`` so that single-edit training sees as many
    edits as the trajectory training of the setup.
    ``builder`` / ``baseline`` / ``baseline_overrides``: for a baseline, the module holding its
    editor (a ``CONFIG`` dataclass and a ``build`` function), its hyperparameter section and
    values this variant sets on top of it.
    ``stats``: a fitted statistic the editor needs at evaluation (its own workflow rule).
    ``seeded``: whether anything of the editor depends on the run's seed (network
    initialisation, sampled prefixes); an unseeded editor runs once per setup, with its first
    seed, since its other seeds would repeat the same numbers.
    """

    name: str
    label: str
    description: str
    colour: str
    family: str = "hiedit"
    selection: str | None = "learned"
    k: str | int = "model"
    fit: str | None = "trajectories"
    checkpoint: str | None = None
    intrinsic_reward: bool | None = None  # None: training.intrinsic_reward of the config
    editor_overrides: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    training_overrides: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    same_edits: bool = False
    builder: str | None = None  # module of a baseline editor (its CONFIG class and build())
    baseline: str | None = None  # its section under `baselines:` in config.yaml
    baseline_overrides: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    stats: str | None = None
    paper_row: str | None = None  # the row of the paper's Table 1 this variant reproduces
    ablation: bool = False  # a row of Table 2 (hiedit against its ablations)
    seeded: bool = True

    @property
    def uses_router(self) -> bool:
        return self.family == "hiedit" and self.selection != "dense"

    @property
    def fitted(self) -> bool:
        return self.fit is not None

    def baseline_search(self, baselines: Mapping[str, Any]) -> dict[str, Any]:
        """The ``search`` grid of this baseline's section in ``baselines`` (section name ->
        values), without the keys this variant fixes (``baseline_overrides`` are not searched)."""
        if self.baseline is None:
            return {}
        search = (baselines.get(self.baseline) or {}).get(SEARCH_KEY) or {}
        return {k: v for k, v in search.items() if k not in self.baseline_overrides}

    def fit_under(self, baselines: Mapping[str, Any]) -> str | None:
        """The fit this variant runs under a setup's ``baselines`` sections."""
        if self.fit == "grid_search" and not self.baseline_search(baselines):
            return None
        return self.fit

    def checkpoint_under(self, baselines: Mapping[str, Any]) -> str | None:
        """The variant whose fitted output this one is evaluated with under ``baselines``."""
        if self.fit == "grid_search" and not self.baseline_search(baselines):
            return None
        return self.checkpoint

    def resolve_k(self, model_k: int, n_modules: int) -> int:
        """K for a model with ``model_k`` and ``n_modules`` candidate modules."""
        k = {"model": model_k, "all": n_modules}.get(self.k, self.k)
        if not isinstance(k, int) or not 1 <= k <= n_modules:
            raise ConfigError(
                f"variant {self.name!r}: K must be between 1 and {n_modules} "
                f"(the candidate modules), got {k}"
            )
        return k


def _entries(*variants: Variant) -> dict[str, Variant]:
    out = {}
    for v in variants:
        checkpoint = v.checkpoint if v.checkpoint is not None else (v.name if v.fitted else None)
        out[v.name] = Variant(**{**v.__dict__, "checkpoint": checkpoint})
    return out


# Registration order is presentation order (tables, legends, colours).
VARIANTS: dict[str, Variant] = _entries(
    Variant(
        "hiedit",
        "HiEdit",
        "learned top-K router, intrinsic reward",
        "#1f77b4",
        paper_row="Ours (full)",
        ablation=True,
    ),
    Variant(
        "hiedit-rand",
        "HiEdit (rand)",
        "hiedit's networks, a fresh random K-subset per edit",
        "#ff7f0e",
        selection="random",
        fit=None,
        checkpoint="hiedit",
        paper_row="HiEdit (rand)",
        ablation=True,
    ),
    Variant(
        "static-k",
        "static K",
        "hiedit's networks, one fixed K-set for every edit",
        "#2ca02c",
        selection="static",
        fit=None,
        checkpoint="hiedit",
        ablation=True,
    ),
    Variant(
        "no-intrinsic",
        "no intrinsic reward",
        "router trained with r_low instead of r_high",
        "#d62728",
        intrinsic_reward=False,
        ablation=True,
    ),
    Variant(
        "rledit",
        "RLEdit",
        "dense: every module, no router (RLEdit)",
        "#9467bd",
        selection="dense",
        k="all",
        paper_row="RLEdit",
        ablation=True,
    ),
    Variant(
        "step-only",
        "step size only",
        "hiedit trained with only its per-module step sizes learnable",
        "#8c564b",
        training_overrides=MappingProxyType({"trainable": "step_size"}),
        ablation=True,
    ),
    Variant(
        "tuned-step",
        "tuned step size",
        "untrained networks, per-module step sizes searched on the validation slice",
        "#e377c2",
        fit="step_search",
        ablation=True,
    ),
    Variant(
        "hiedit-untrained",
        "untrained",
        "hiedit's networks before training (step size editor.lr)",
        "#7f7f7f",
        fit=None,
        ablation=True,
    ),
    Variant(
        "mend",
        "MEND",
        "the low-level network trained on single edits (no trajectories), every module",
        "#bcbd22",
        selection="dense",
        k="all",
        editor_overrides=MappingProxyType({"style": "mend"}),
        training_overrides=MappingProxyType({"trajectory_length": 1, "back_depth": 1}),
        same_edits=True,
        paper_row="MEND",
    ),
    Variant(
        "malmen",
        "MALMEN",
        "MALMEN's least-squares rule trained on single edits, every module",
        "#17becf",
        selection="dense",
        k="all",
        editor_overrides=MappingProxyType({"style": "malmen"}),
        training_overrides=MappingProxyType({"trajectory_length": 1, "back_depth": 1}),
        same_edits=True,
        paper_row="MALMEN",
    ),
    Variant(
        "ft-m",
        "FT-M",
        "fine-tuning of the candidate modules on the answer tokens, per edit (EasyEdit's FT-M)",
        "#aec7e8",
        family="baseline",
        selection=None,
        k="all",
        fit="grid_search",
        seeded=False,
        builder="hiedit.baselines.ft_m",
        baseline="ft-m",
        paper_row="FT",
    ),
    Variant(
        "ultraedit",
        "UltraEdit",
        "training-free: lifelong-normalised gradients, a ridge closed form per turn of edits",
        "#ffbb78",
        family="baseline",
        selection=None,
        k="all",
        fit="grid_search",
        seeded=False,
        builder="hiedit.baselines.ultraedit",
        baseline="ultraedit",
    ),
    Variant(
        "ultraedit-1",
        "UltraEdit (1/turn)",
        "UltraEdit with one edit per turn, like every other editor here",
        "#ff9896",
        family="baseline",
        selection=None,
        k="all",
        fit="grid_search",
        seeded=False,
        builder="hiedit.baselines.ultraedit",
        baseline="ultraedit",
        baseline_overrides=MappingProxyType({"edits_per_turn": 1}),
    ),
    Variant(
        "memit",
        "MEMIT",
        "locate-then-edit: a target at the subject, closed-form updates of the down-projections",
        "#c5b0d5",
        family="baseline",
        selection=None,
        k="all",
        fit="grid_search",
        builder="hiedit.baselines.memit",
        baseline="memit",
        stats="key_stats",
        paper_row="MEMIT",
    ),
    Variant(
        "alphaedit",
        "AlphaEdit",
        "MEMIT's targets, updates projected onto the null space of generic text's keys",
        "#c49c94",
        family="baseline",
        selection=None,
        k="all",
        fit="grid_search",
        builder="hiedit.baselines.alphaedit",
        baseline="alphaedit",
        stats="key_stats",
        paper_row="AlphaEdit",
    ),
)


def sweep_variant(k: int) -> Variant:
    """``hiedit-k<K>``: hiedit trained and evaluated with a fixed K."""
    return Variant(
        f"{K_SWEEP_PREFIX}{k}",
        f"HiEdit K={k}",
        f"hiedit trained and evaluated with K = {k}",
        "#1f77b4",
        k=k,
        checkpoint=f"{K_SWEEP_PREFIX}{k}",
    )


def get(name: str) -> Variant:
    """The :class:`Variant` called ``name`` (``hiedit-k<K>`` for any K)."""
    if name in VARIANTS:
        return VARIANTS[name]
    match = _K_SWEEP.match(name)
    if match and int(match[1]) >= 1:
        return sweep_variant(int(match[1]))
    raise ConfigError(
        f"unknown variant {name!r}; expected one of {', '.join(names())} or {K_SWEEP_PREFIX}<K>"
    )


def names() -> list[str]:
    """Every registered variant name, in presentation order (the K sweep is not listed)."""
    return list(VARIANTS)


def is_sweep(name: str) -> bool:
    return _K_SWEEP.match(name) is not None


def sort_key(name: str) -> tuple[int, int, str]:
    """Presentation order: registered variants, then the K sweep by K, then anything else."""
    if name in VARIANTS:
        return (0, list(VARIANTS).index(name), name)
    match = _K_SWEEP.match(name)
    if match:
        return (1, int(match[1]), name)
    return (2, 0, name)
