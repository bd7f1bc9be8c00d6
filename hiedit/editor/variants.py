"""What a HiEdit-family variant means for the editor: its K, selection rule and trained networks.

The variants themselves (names, selection, which checkpoint each uses, which parameters train)
are defined once, in :mod:`hiedit.registry`; :func:`resolve_variant` binds one to a model's K and
number of candidate modules, and the functions below implement the ``static`` and ``random``
selection rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hiedit import registry
from hiedit.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """A registry variant bound to a model: what the editor needs to know."""

    name: str
    trained_as: str  # the variant whose fitted networks it uses (network identity)
    k: int
    selection: str  # one of registry.SELECTIONS
    uses_router: bool
    intrinsic_reward: bool | None  # None: take training.intrinsic_reward from the config


def resolve_variant(name: str, model_k: int, n_modules: int) -> Variant:
    """The :class:`Variant` for ``name`` with the model's K and its ``n_modules`` candidates."""
    spec = registry.get(name)
    if spec.family != "hiedit":
        raise ConfigError(
            f"variant {name!r} is a baseline editor ({spec.builder}), not a HiEdit variant"
        )
    if not 1 <= model_k <= n_modules:
        raise ConfigError(f"model k = {model_k} must be between 1 and {n_modules}")
    return Variant(
        name=name,
        trained_as=spec.checkpoint or spec.name,
        k=spec.resolve_k(model_k, n_modules),
        selection=spec.selection,
        uses_router=spec.uses_router,
        intrinsic_reward=spec.intrinsic_reward,
    )


def static_module_set(
    explicit: Sequence[str],
    module_names: Sequence[str],
    k: int,
    selection_counts: Sequence[int] | None,
) -> list[int]:
    """Indices of the static-k set: the explicit list, else the K most often picked on the train split."""
    if explicit:
        unknown = [n for n in explicit if n not in module_names]
        if unknown:
            raise ConfigError(
                "config key 'evaluation.static_k_modules' names modules that are not candidates: "
                + ", ".join(unknown)
            )
        return sorted(module_names.index(n) for n in explicit)
    if selection_counts is None:
        raise ConfigError(
            "variant static-k needs evaluation.static_k_modules or a trained checkpoint that holds "
            "the router's selection counts on the train split"
        )
    counts = torch.tensor(list(selection_counts), dtype=torch.float64)
    # Ties go to the earlier module in profile order (stable sort).
    order = sorted(range(len(counts)), key=lambda i: (-counts[i].item(), i))
    return sorted(order[:k])


def random_subset(n_modules: int, k: int, generator: torch.Generator) -> list[int]:
    """A uniform random K-subset of the modules (sorted indices) drawn from ``generator``."""
    return sorted(torch.randperm(n_modules, generator=generator)[:k].tolist())
