"""Temporary edits through a low-rank side path (docs/method.md §5), without touching the weights.

Inside :func:`side_path`, each module ``l`` with factors computes
``y = x Wᵀ + m_l · scale_l · (x Aᵀ) B`` instead of ``x (W + m_l Δ_l)ᵀ``. Autograd then gives
exact gradients to the factors (the hypernetwork outputs) and to the mask ``m_l`` (the router's
straight-through path), with no apply/revert of the weights. ``m_l`` may be a scalar, one value
per batch row or one value per position (packed sequences, :mod:`hiedit.editor.packing`), so a
single forward can score the same rows under different masks (e.g. the base model, ω and the
full mask 1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from hiedit.editor.lowlevel import Factors


@contextmanager
def side_path(
    modules: Sequence[nn.Linear],
    factors: Sequence[Factors | None],
    masks: Sequence[torch.Tensor | float | None],
) -> Iterator[None]:
    """Route ``modules[l]`` through the side path of ``factors[l]`` weighted by ``masks[l]``.

    A module with ``None`` factors or mask is left alone. A mask tensor of shape (batch,) weights
    each batch row separately, one of shape (batch, positions) each position.
    """
    handles = []

    def make_hook(f: Factors, m: torch.Tensor | float):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            weight = f.scale * m
            if isinstance(weight, torch.Tensor) and weight.ndim > 0:
                weight = weight.view(*weight.shape, *([1] * (x.ndim - weight.ndim)))
            extra = (x.to(f.a.dtype) @ f.a.t()) @ f.b
            return output + (weight * extra).to(output.dtype)

        return hook

    try:
        for module, f, m in zip(modules, factors, masks, strict=True):
            if f is None or m is None:
                continue
            handles.append(module.register_forward_hook(make_hook(f, m)))
        yield
    finally:
        for handle in handles:
            handle.remove()
