"""Pure-PyTorch reference of the grouped low-rank commit, used on CPU and as the tests' oracle.

Same semantics as the Triton kernel: for every selected layer ``W += s * B.T @ A`` with the
product accumulated in fp32 and rounded once into the weight's dtype. The weight is processed
in row blocks through one reused fp32 scratch block, so temporaries stay small and in cache (a
full fp32 copy of a Llama-3-8B MLP matrix is 235 MB, and fresh allocations of that size are
what makes the dense path slow on CPU). Weights already in fp32, and fp32 master copies, are
updated by ``addmm_`` in place with no temporary at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import Problem, validate
from .precision import PrecisionState

# Rows per block: about 256 K elements (1 MB of fp32) per temporary, so the scratch block stays
# in cache between the widen, addmm_ and round steps (timed best of 16 K - 4 M elements on a
# Llama-3-8B MLP matrix, single-threaded).
_BLOCK_ELEMENTS = 1 << 18


def _rows_per_block(d_in: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, d_in))


def _commit_one(problem: Problem, state: PrecisionState | None) -> None:
    weight, scale = problem.weight, problem.scale
    a = problem.a.to(torch.float32)
    bt = problem.b.to(torch.float32).t()
    mode, buffer = ("nearest", None) if state is None else state.buffer_for(weight)
    d_out = weight.shape[0]
    step = _rows_per_block(weight.shape[1])

    if weight.dtype == torch.float32 or mode == "master":
        # addmm_ accumulates s * B^T A in fp32 and adds it in place: no temporary at all.
        target = weight if buffer is None else buffer
        for r0 in range(0, d_out, step):
            rows = slice(r0, r0 + step)
            target[rows].addmm_(bt[rows], a, alpha=scale)
            if buffer is not None:
                weight[rows].copy_(target[rows])  # the single rounding into the weight dtype
        return

    # One fp32 scratch block reused down the rows: a fresh large allocation per block would
    # page-fault on every call.
    scratch = torch.empty(
        min(step, d_out), weight.shape[1], dtype=torch.float32, device=weight.device
    )
    for r0 in range(0, d_out, step):
        rows = slice(r0, r0 + step)
        block = scratch[: weight[rows].shape[0]]
        if mode == "nearest":
            block.copy_(weight[rows])
            block.addmm_(bt[rows], a, alpha=scale)
            weight[rows].copy_(block)
        elif mode == "compensated":
            # Kahan: t = W + (C + delta); W = round(t); C = t - W (what the rounding dropped).
            block.copy_(buffer[rows])
            block.addmm_(bt[rows], a, alpha=scale)
            block.add_(weight[rows])
            weight[rows].copy_(block)
            buffer[rows].copy_(block.sub_(weight[rows]))
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

    See :func:`lowrank_kernels.lowrank_update_` for the arguments; this is the same operation, layer by
    layer, in plain PyTorch (any device).
    """
    problems = validate(weights, a, b, scales, mask)
    with torch.no_grad():
        for problem in problems:
            _commit_one(problem, state)
            if state is not None:
                state.mark_committed(problem.weight)
