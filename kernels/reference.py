"""Pure-PyTorch reference of the grouped low-rank commit, used on CPU and as the tests' oracle.

Same semantics as the Triton kernel: for every selected layer ``W += s * B.T @ A`` with the
product accumulated in fp32 and rounded once into the weight's dtype. The weight is processed
in row blocks so the fp32 temporaries stay small (a full fp32 copy of a Llama-3-8B MLP matrix
is 235 MB, and fresh allocations of that size are what makes the dense path slow on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import Problem, validate
from .precision import PrecisionState

# Rows per block: about 4 M elements (16 MB of fp32) per temporary, large enough for an
# efficient GEMM and small enough to stay out of the allocator's fresh-mmap path.
_BLOCK_ELEMENTS = 1 << 22


def _rows_per_block(d_in: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, d_in))


def _commit_one(problem: Problem, state: PrecisionState | None) -> None:
    weight, scale = problem.weight, problem.scale
    a = problem.a.to(torch.float32)
    bt = problem.b.to(torch.float32).t()
    mode, buffer = ("nearest", None) if state is None else state.buffer_for(weight)
    d_out = weight.shape[0]
    step = _rows_per_block(weight.shape[1])

    if weight.dtype == torch.float32:
        # fp32 weights: addmm_ accumulates in fp32 and writes in place, no temporary at all.
        for r0 in range(0, d_out, step):
            weight[r0 : r0 + step].addmm_(bt[r0 : r0 + step], a, alpha=scale)
        return

    for r0 in range(0, d_out, step):
        rows = slice(r0, r0 + step)
        delta = torch.mm(bt[rows], a)
        if scale != 1.0:
            delta.mul_(scale)
        if mode == "nearest":
            weight[rows].copy_(delta.add_(weight[rows]))
        elif mode == "master":
            master = buffer[rows]
            master.add_(delta)
            weight[rows].copy_(master)
        elif mode == "compensated":
            comp = buffer[rows]
            # Kahan: t = W + (C + delta); W = round(t); C = t - W (what the rounding dropped).
            total = delta.add_(comp).add_(weight[rows])
            weight[rows].copy_(total)
            comp.copy_(total.sub_(weight[rows]))
        else:
            raise ValueError(f"unknown precision mode {mode!r}")


def lowrank_update_reference_(
    weights: Sequence[torch.Tensor],
    a: Sequence[torch.Tensor | None],
    b: Sequence[torch.Tensor | None],
    scales: Sequence[float] | torch.Tensor,
    mask: Sequence[bool] | torch.Tensor | None = None,
    *,
    state: PrecisionState | None = None,
) -> None:
    """In place, ``weights[l] += scales[l] * b[l].T @ a[l]`` for every selected ``l``.

    See :func:`kernels.lowrank_update_` for the arguments; this is the same operation, layer by
    layer, in plain PyTorch (any device).
    """
    problems = validate(weights, a, b, scales, mask)
    with torch.no_grad():
        for problem in problems:
            _commit_one(problem, state)
            if state is not None:
                state.mark_committed(problem.weight)
