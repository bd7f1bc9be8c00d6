"""Method variants and ablations (method §7): how a variant is trained and how it selects modules.

| variant        | trained as     | K at train = inference | selection at inference             |
|----------------|----------------|------------------------|------------------------------------|
| hiedit         | hiedit         | model k                | learned top-K                      |
| hiedit-rand    | (uses hiedit)  | model k                | fresh seeded uniform K-subset      |
| static-k       | (uses hiedit)  | model k                | one fixed K-set for every edit     |
| no-intrinsic   | no-intrinsic   | model k                | learned top-K (router trained on r_low) |
| rledit         | rledit         | L (dense, no router)   | all modules                        |
| hiedit-k<K>    | hiedit-k<K>    | K                      | learned top-K                      |
| hiedit-untrained | (none: fresh networks) | model k          | top-K of the untrained router      |

``hiedit-untrained`` is evaluated with the seeded initial networks, never trained: the baseline
that shows what training adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hiedit.errors import ConfigError

BASE_VARIANTS = ("hiedit", "hiedit-rand", "static-k", "no-intrinsic", "rledit", "hiedit-untrained")
K_PREFIX = "hiedit-k"
SELECTIONS = ("learned", "random", "static", "dense")


@dataclass(frozen=True)
class Variant:
    """What a variant means for the editor."""

    name: str
    trained_as: str  # the variant whose training produced the networks it uses
    k: int
    selection: str  # one of SELECTIONS
    uses_router: bool  # whether the trained networks include a router
    intrinsic_reward: bool | None  # None: take training.intrinsic_reward from the config


def resolve_variant(name: str, model_k: int, n_modules: int) -> Variant:
    """The :class:`Variant` for ``name`` with the model's K and its ``n_modules`` candidates."""
    if name.startswith(K_PREFIX):
        suffix = name[len(K_PREFIX) :]
        if not suffix.isdigit() or not 1 <= int(suffix) <= n_modules:
            raise ConfigError(
                f"variant {name!r}: K must be an integer between 1 and {n_modules} (the candidate modules)"
            )
        return Variant(name, name, int(suffix), "learned", True, None)
    if not 1 <= model_k <= n_modules:
        raise ConfigError(f"model k = {model_k} must be between 1 and {n_modules}")
    table = {
        "hiedit": Variant("hiedit", "hiedit", model_k, "learned", True, None),
        "hiedit-rand": Variant("hiedit-rand", "hiedit", model_k, "random", True, None),
        "static-k": Variant("static-k", "hiedit", model_k, "static", True, None),
        "no-intrinsic": Variant("no-intrinsic", "no-intrinsic", model_k, "learned", True, False),
        "rledit": Variant("rledit", "rledit", n_modules, "dense", False, None),
        "hiedit-untrained": Variant("hiedit-untrained", "hiedit", model_k, "learned", True, None),
    }
    if name not in table:
        raise ConfigError(
            f"unknown variant {name!r}; expected one of {', '.join(BASE_VARIANTS)} or {K_PREFIX}<K>"
        )
    return table[name]


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
