"""Input validation shared by every backend of the low-rank commit.

Everything is checked before anything is written, so a bad layer never leaves the group half
updated. Errors name the layer index and the offending tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Problem:
    """One selected layer, validated: ``weight += scale * b.T @ a``."""

    index: int
    weight: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    scale: float


def _as_scales(scales: Sequence[float] | torch.Tensor, count: int) -> list[float]:
    if isinstance(scales, torch.Tensor):
        if scales.dim() != 1 or scales.shape[0] != count:
            raise ValueError(f"scales must have shape ({count},), got {tuple(scales.shape)}")
        return [float(s) for s in scales.tolist()]
    values = [float(s) for s in scales]
    if len(values) != count:
        raise ValueError(f"scales has {len(values)} entries for {count} weights")
    return values


def _as_mask(mask: Sequence[bool] | torch.Tensor | None, count: int) -> list[bool]:
    if mask is None:
        return [True] * count
    if isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
        if mask.dim() != 1 or mask.shape[0] != count:
            raise ValueError(f"mask must have shape ({count},), got {tuple(mask.shape)}")
        return [bool(m) for m in mask.tolist()]
    values = [bool(m) for m in mask]
    if len(values) != count:
        raise ValueError(f"mask has {len(values)} entries for {count} weights")
    return values


def _check_factor(
    name: str, index: int, factor: object, weight: torch.Tensor, width: int
) -> torch.Tensor:
    if not isinstance(factor, torch.Tensor):
        raise TypeError(f"{name}[{index}] must be a tensor, got {type(factor).__name__}")
    if factor.dim() != 2:
        raise ValueError(
            f"{name}[{index}] must be 2-D (n x {width}), got shape {tuple(factor.shape)}"
        )
    if factor.shape[1] != width:
        raise ValueError(
            f"{name}[{index}] has shape {tuple(factor.shape)} but weights[{index}] "
            f"{tuple(weight.shape)} needs {width} columns"
        )
    if factor.device != weight.device:
        raise ValueError(
            f"{name}[{index}] is on {factor.device} but weights[{index}] is on {weight.device}"
        )
    if factor.dtype not in (torch.float32, weight.dtype):
        raise TypeError(
            f"{name}[{index}] has dtype {factor.dtype}; factors must be float32 or the weight's "
            f"dtype {weight.dtype}"
        )
    # Factors are small (n x d); a contiguous copy costs far less than a strided kernel.
    return factor.contiguous()


def validate(
    weights: Sequence[torch.Tensor],
    a: Sequence[torch.Tensor | None],
    b: Sequence[torch.Tensor | None],
    scales: Sequence[float] | torch.Tensor,
    mask: Sequence[bool] | torch.Tensor | None,
) -> list[Problem]:
    """Check a commit group and return the selected, non-empty layers.

    Only selected layers are inspected: factors of unselected layers may be ``None`` and their
    weights are never read.
    """
    count = len(weights)
    if len(a) != count or len(b) != count:
        raise ValueError(f"got {count} weights, {len(a)} factors a and {len(b)} factors b")
    scale_list = _as_scales(scales, count)
    selected = _as_mask(mask, count)

    problems: list[Problem] = []
    device = None
    for index in range(count):
        if not selected[index]:
            continue
        weight = weights[index]
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weights[{index}] must be a tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(
                f"weights[{index}] must be 2-D (d_out x d_in), got {tuple(weight.shape)}"
            )
        if weight.dtype not in WEIGHT_DTYPES:
            raise TypeError(
                f"weights[{index}] has dtype {weight.dtype}; supported: float32, bfloat16, float16"
            )
        if not weight.is_contiguous():
            # A strided copy would be updated instead of the caller's weight, so refuse.
            raise ValueError(
                f"weights[{index}] is not contiguous (strides {weight.stride()}); the in-place "
                "update needs a contiguous weight"
            )
        if device is None:
            device = weight.device
        elif weight.device != device:
            raise ValueError(f"weights[{index}] is on {weight.device} but weights are on {device}")
        d_out, d_in = weight.shape
        fa = _check_factor("a", index, a[index], weight, d_in)
        fb = _check_factor("b", index, b[index], weight, d_out)
        if fa.shape[0] != fb.shape[0]:
            raise ValueError(
                f"a[{index}] has rank {fa.shape[0]} but b[{index}] has rank {fb.shape[0]}"
            )
        if fa.shape[0] == 0 or weight.numel() == 0:
            continue
        problems.append(Problem(index, weight, fa, fb, scale_list[index]))

    _refuse_aliasing(problems)
    return problems


def _refuse_aliasing(problems: list[Problem]) -> None:
    # Two selected layers sharing memory would be a write race in one launch and an
    # order-dependent result in the reference.
    spans = sorted(
        (
            p.weight.data_ptr(),
            p.weight.data_ptr() + p.weight.numel() * p.weight.element_size(),
            p.index,
        )
        for p in problems
    )
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise ValueError(
                f"weights[{first}] and weights[{second}] share memory; each selected weight "
                "must be a distinct tensor"
            )
