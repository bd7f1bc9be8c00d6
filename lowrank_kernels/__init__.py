"""Fused low-rank weight commits for lifelong model editing (importable without ``hiedit``).

``lowrank_update_`` adds ``s_l * B_l.T @ A_l`` in place to every selected weight of a group: one
grouped Triton launch on CUDA, the PyTorch reference elsewhere. ``PrecisionState`` carries the
buffers that make long streams of small commits into bf16/fp16 weights exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from . import reference
from .precision import MODES, PrecisionState
from .reference import lowrank_update_reference_

__all__ = [
    "MODES",
    "PrecisionState",
    "lowrank_update_",
    "lowrank_update_reference_",
    "reference",
    "resolve_backend",
]

BACKENDS = ("triton", "torch")


def resolve_backend(device: torch.device | None, backend: str | None = None) -> str:
    """Pick ``"triton"`` or ``"torch"``: explicit argument, then ``KERNELS_BACKEND``, then device.

    Without an explicit choice CUDA tensors use the Triton kernel and everything else the
    reference. Forcing ``triton`` on CPU tensors only works under ``TRITON_INTERPRET=1``.
    """
    choice = backend or os.environ.get("KERNELS_BACKEND") or None
    if choice is not None:
        if choice not in BACKENDS:
            raise ValueError(f"unknown backend {choice!r}; choose one of {BACKENDS}")
        return choice
    if device is not None and device.type == "cuda":
        from .lowrank_update import triton_available

        if triton_available():
            return "triton"
    return "torch"


def lowrank_update_(
    weights: Sequence[torch.Tensor],
    a: Sequence[torch.Tensor | None],
    b: Sequence[torch.Tensor | None],
    scales: Sequence[float] | torch.Tensor,
    mask: Sequence[bool] | torch.Tensor | None = None,
    *,
    state: PrecisionState | None = None,
    backend: str | None = None,
) -> None:
    """In place, ``weights[l] += scales[l] * b[l].T @ a[l]`` for every ``l`` with ``mask[l]``.

    Args:
        weights: ``L`` contiguous 2-D tensors ``(d_out_l, d_in_l)`` (like ``nn.Linear.weight``),
            any mix of shapes and of float32/bfloat16/float16, all on one device.
        a: ``L`` factors ``(n_l, d_in_l)``, float32 or the weight's dtype.
        b: ``L`` factors ``(n_l, d_out_l)``, float32 or the weight's dtype. Factors of
            unselected layers may be ``None``; ``n_l = 0`` is a no-op for that layer.
        scales: ``L`` floats (a sequence or a 1-D tensor).
        mask: ``L`` booleans (a sequence or a bool tensor); ``None`` selects every layer.
            Unselected weights are neither read nor written.
        state: precision buffers carried across calls. ``None`` means plain round-to-nearest,
            which loses most small updates in bf16/fp16 over a long stream; pass a
            ``PrecisionState()`` (default mode ``auto`` = fp32 master copy for low-precision
            weights) to commit exactly.
        backend: ``None`` (Triton for CUDA tensors, reference otherwise; the environment
            variable ``KERNELS_BACKEND=triton|torch`` overrides), ``"triton"`` or ``"torch"``.

    The product is accumulated in fp32 and rounded once into the weight's dtype. The commit is
    detached from autograd. All inputs are checked before anything is written; errors name the
    layer index and the offending tensor.
    """
    device = None
    if mask is None:
        selected = range(len(weights))
    else:
        selected = [
            i for i, m in enumerate(mask.tolist() if isinstance(mask, torch.Tensor) else mask) if m
        ]
    for index in selected:
        if index < len(weights) and isinstance(weights[index], torch.Tensor):
            device = weights[index].device
            break
    if resolve_backend(device, backend) == "triton":
        from .lowrank_update import lowrank_update_triton_

        lowrank_update_triton_(weights, a, b, scales, mask, state=state)
    else:
        lowrank_update_reference_(weights, a, b, scales, mask, state=state)
