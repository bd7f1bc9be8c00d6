"""The one place an edit is committed to the model's weights (docs/method.md §6).

``W_l ← W_l + scale_l · B_lᵀ A_l`` for the selected modules only, in place, through
``lowrank_kernels.lowrank_update_`` (one grouped launch on GPU, the blocked PyTorch reference on CPU),
with a :class:`lowrank_kernels.PrecisionState` built from ``editor.commit_precision`` (whose ``auto`` mode
is defined once, in ``lowrank_kernels/precision.py``: an fp32 master copy for bf16/fp16 weights, plain
rounding for fp32 weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import lowrank_kernels
from hiedit.editor.lowlevel import Factors
from hiedit.errors import NonFiniteError


def check_finite(factors: Sequence[Factors | None], names: Sequence[str], step: int) -> None:
    """Raise :class:`NonFiniteError` naming the step and the first module with a NaN/inf factor."""
    for f, name in zip(factors, names, strict=True):
        if f is None:
            continue
        for label, tensor in (("A", f.a), ("B", f.b), ("scale", f.scale)):
            if not bool(torch.isfinite(tensor).all()):
                raise NonFiniteError(
                    f"step {step}: the update of module {name} has non-finite values in factor {label}"
                )


def commit_update(
    modules: Sequence[nn.Linear],
    factors: Sequence[Factors | None],
    selected: Sequence[bool],
    state: lowrank_kernels.PrecisionState | None,
    *,
    names: Sequence[str],
    step: int,
) -> None:
    """Commit ``factors[l]`` to ``modules[l].weight`` for every selected ``l`` (after a finite check)."""
    chosen = [f if s else None for f, s in zip(factors, selected, strict=True)]
    check_finite(chosen, names, step)
    # The parameters themselves (not `.data` views): precision buffers are keyed by tensor identity.
    weights = [m.weight for m in modules]
    a = [f.a.detach() if f is not None else None for f in chosen]
    b = [f.b.detach() if f is not None else None for f in chosen]
    scales = [float(f.scale.detach()) if f is not None else 0.0 for f in chosen]
    lowrank_kernels.lowrank_update_(
        weights, a, b, scales, [f is not None for f in chosen], state=state
    )
