"""Grouped Triton kernel for committing low-rank updates to many weights in one launch.

For every selected layer l: ``W_l += s_l * B_l.T @ A_l`` (``W_l`` is ``d_out x d_in``,
``A_l`` is ``n_l x d_in``, ``B_l`` is ``n_l x d_out``). The launch is grouped like Triton's
grouped-GEMM tutorial: a per-problem metadata table holds raw pointers, sizes and dtype codes,
and one flat grid covers the output tiles of the selected problems only, so unselected weights
are never touched. Each program owns one ``BLOCK_M x BLOCK_N`` tile of one weight, accumulates
``B^T A`` over ``n`` in fp32, and applies it under the problem's precision mode with a single
rounding into the weight's dtype.

The operation is memory-bound for n below a few hundred (2 FLOP per element per rank, 4 bytes
per bf16 element read and written), so the tile shapes aim at streaming W once at full
bandwidth; the factors are small and stay in L2.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._checks import validate
from .precision import PrecisionState

if importlib.util.find_spec("triton") is not None:
    import triton
    import triton.language as tl
else:  # pragma: no cover - Triton ships for Linux only; the reference covers other platforms.
    triton = None
    tl = None


def triton_available() -> bool:
    """Whether the Triton backend can be used at all (Triton importable)."""
    return triton is not None


def interpreting() -> bool:
    """Whether Triton kernels run on CPU tensors through ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Metadata table: one int64 row per selected problem with the columns
#   0 weight ptr, 1 A ptr, 2 B ptr, 3 buffer ptr (master or compensation; 0 if none),
#   4 d_out, 5 d_in, 6 rank n, 7 first tile index, 8 tiles per row of tiles,
#   9 weight dtype code, 10 factors are fp32, 11 precision mode code.
_META_COLUMNS = 12

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_MODE_CODES = {"nearest": 0, "compensated": 1, "master": 2}


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and launch parameters for the grouped kernel."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2


# Config list keyed on the largest rank in the group. Triton's autotuner is deliberately not used:
# it benchmarks by launching the kernel repeatedly, which would apply the update to the live
# weights several times (their pointers sit in the metadata table, out of reach of
# `restore_value`). `benchmarks/commit_gpu.py --sweep` times these candidates on scratch weights.
CONFIGS: tuple[tuple[int, KernelConfig], ...] = (
    (16, KernelConfig(64, 128, 16, num_warps=4, num_stages=2)),
    (32, KernelConfig(64, 128, 32, num_warps=4, num_stages=2)),
    # 96 KB of shared memory on sm_90: also fits consumer parts (about 99 KB per block).
    (1 << 62, KernelConfig(128, 128, 32, num_warps=8, num_stages=3)),
)

# The interpreter's cost grows with the number of program instances: use one big tile.
INTERPRETER_CONFIG = KernelConfig(128, 128, 32, num_warps=4, num_stages=1)


def pick_config(max_rank: int) -> KernelConfig:
    """The launch config for a group whose largest rank is ``max_rank``."""
    if interpreting():
        return INTERPRETER_CONFIG
    for bound, config in CONFIGS:
        if max_rank <= bound:
            return config
    return CONFIGS[-1][1]


if triton is not None:

    @triton.jit
    def _round_to(x, TY: tl.constexpr):
        """Round fp32 ``x`` to ``TY`` to nearest, ties to even."""
        if TY == tl.bfloat16:
            # Done on the bits: Triton's interpreter truncates fp32 -> bf16 casts, and the same
            # code must run there and on the GPU (where this matches cvt.rn.bf16.f32 for finite x).
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            out = x.to(TY)
        return out

    @triton.jit
    def _commit_tile(
        w_raw,
        a_raw,
        b_raw,
        aux_raw,
        mode,
        scale,
        d_out,
        d_in,
        rank,
        tile_m,
        tile_n,
        W_TY: tl.constexpr,
        F_TY: tl.constexpr,
        COMP_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        w_ptr = w_raw.to(tl.pointer_type(W_TY))
        a_ptr = a_raw.to(tl.pointer_type(F_TY))
        b_ptr = b_raw.to(tl.pointer_type(F_TY))
        rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < d_out
        col_ok = cols < d_in

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, rank, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < rank
            # B is (n, d_out) row-major, so the transposed tile is read along contiguous rows.
            bt = tl.load(
                b_ptr + ks[None, :] * d_out + rows[:, None],
                mask=k_ok[None, :] & row_ok[:, None],
                other=0.0,
            )
            a = tl.load(
                a_ptr + ks[:, None] * d_in + cols[None, :],
                mask=k_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            # Operands go through fp32: bf16/fp16 values are exact in tf32, so "tf32" gives exact
            # products for them, and fp32 factors use 3xTF32 for fp32-level accuracy. (Native
            # bf16 dots would do too on GPU, but the interpreter multiplies their raw bits.)
            if F_TY == tl.float32:
                acc = tl.dot(bt, a, acc, input_precision="tf32x3")
            else:
                acc = tl.dot(bt.to(tl.float32), a.to(tl.float32), acc, input_precision="tf32")
        delta = acc * scale

        offsets = rows[:, None] * d_in + cols[None, :]
        inside = row_ok[:, None] & col_ok[None, :]
        if mode == 2:
            # master: M += delta; W = round(M). W itself is never read.
            m_ptr = aux_raw.to(tl.pointer_type(tl.float32))
            master = tl.load(m_ptr + offsets, mask=inside, other=0.0) + delta
            tl.store(m_ptr + offsets, master, mask=inside)
            tl.store(w_ptr + offsets, _round_to(master, W_TY), mask=inside)
        elif mode == 1:
            # Kahan: t = W + (C + delta); W = round(t); C = t - W (what the rounding dropped).
            if COMP_FP32:
                c_ptr = aux_raw.to(tl.pointer_type(tl.float32))
            else:
                c_ptr = aux_raw.to(tl.pointer_type(W_TY))
            comp = tl.load(c_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            total = (delta + comp) + w
            rounded = _round_to(total, W_TY)
            tl.store(w_ptr + offsets, rounded, mask=inside)
            tl.store(
                c_ptr + offsets,
                _round_to(total - rounded.to(tl.float32), c_ptr.dtype.element_ty),
                mask=inside,
            )
        else:
            w = tl.load(w_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            tl.store(w_ptr + offsets, _round_to(w + delta, W_TY), mask=inside)

    @triton.jit
    def _lowrank_commit_kernel(
        meta_ptr,
        scale_ptr,
        num_problems,
        META_COLUMNS: tl.constexpr,
        COMP_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        # Problems are few (one per selected module): a linear scan over their first tile
        # beats a binary search's dependent loads.
        prob = pid * 0
        for p in range(1, num_problems):
            start = tl.load(meta_ptr + p * META_COLUMNS + 7)
            prob = tl.where(pid >= start, p, prob)
        row = meta_ptr + prob * META_COLUMNS
        w_raw = tl.load(row + 0)
        a_raw = tl.load(row + 1)
        b_raw = tl.load(row + 2)
        aux_raw = tl.load(row + 3)
        d_out = tl.load(row + 4)
        d_in = tl.load(row + 5)
        rank = tl.load(row + 6)
        local = pid - tl.load(row + 7)
        tiles_n = tl.load(row + 8)
        w_code = tl.load(row + 9)
        factor_fp32 = tl.load(row + 10)
        mode = tl.load(row + 11)
        scale = tl.load(scale_ptr + prob)
        tile_m = local // tiles_n
        tile_n = local % tiles_n

        # Each (weight dtype, factor dtype) pair is its own instantiation: pointer element types
        # are compile-time, but one launch may mix them.
        args = (w_raw, a_raw, b_raw, aux_raw, mode, scale, d_out, d_in, rank, tile_m, tile_n)
        if w_code == 0:
            _commit_tile(*args, tl.float32, tl.float32, COMP_FP32, BLOCK_M, BLOCK_N, BLOCK_K)
        elif w_code == 1 and factor_fp32 != 0:
            _commit_tile(*args, tl.bfloat16, tl.float32, COMP_FP32, BLOCK_M, BLOCK_N, BLOCK_K)
        elif w_code == 1:
            _commit_tile(*args, tl.bfloat16, tl.bfloat16, COMP_FP32, BLOCK_M, BLOCK_N, BLOCK_K)
        elif factor_fp32 != 0:
            _commit_tile(*args, tl.float16, tl.float32, COMP_FP32, BLOCK_M, BLOCK_N, BLOCK_K)
        else:
            _commit_tile(*args, tl.float16, tl.float16, COMP_FP32, BLOCK_M, BLOCK_N, BLOCK_K)


def lowrank_update_triton_(
    weights: Sequence[torch.Tensor],
    a: Sequence[torch.Tensor | None],
    b: Sequence[torch.Tensor | None],
    scales: Sequence[float] | torch.Tensor,
    mask: Sequence[bool] | torch.Tensor | None = None,
    *,
    state: PrecisionState | None = None,
    config: KernelConfig | None = None,
) -> None:
    """Launch the grouped kernel: same contract as :func:`lowrank_kernels.lowrank_update_`.

    Needs CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set before this module was
    imported. ``config`` overrides the tile shape chosen from :data:`CONFIGS`.
    """
    if triton is None:
        raise RuntimeError("the Triton backend needs the `triton` package (Linux only)")
    problems = validate(weights, a, b, scales, mask)
    if not problems:
        return
    device = problems[0].weight.device
    if device.type != "cuda" and not (interpreting() and device.type == "cpu"):
        raise RuntimeError(
            f"the Triton backend needs CUDA tensors (got {device}); use backend='torch', or set "
            "TRITON_INTERPRET=1 before importing kernels to run the kernel on CPU"
        )
    comp_fp32 = state is None or state.compensation_dtype == torch.float32

    rows: list[list[int]] = []
    scale_values: list[float] = []
    keep_alive: list[torch.Tensor] = []
    max_rank = max(p.a.shape[0] for p in problems)
    cfg = config or pick_config(max_rank)
    tile_start = 0
    for problem in problems:
        weight = problem.weight
        fa, fb = problem.a, problem.b
        if fa.dtype != fb.dtype:
            # One factor in fp32 and the other low precision: widen the low one (exactly).
            fa, fb = fa.to(torch.float32), fb.to(torch.float32)
        keep_alive += [fa, fb]
        mode, buffer = ("nearest", None) if state is None else state.buffer_for(weight)
        d_out, d_in = weight.shape
        tiles_n = triton.cdiv(d_in, cfg.block_n)
        tiles = triton.cdiv(d_out, cfg.block_m) * tiles_n
        rows.append(
            [
                weight.data_ptr(),
                fa.data_ptr(),
                fb.data_ptr(),
                0 if buffer is None else buffer.data_ptr(),
                d_out,
                d_in,
                fa.shape[0],
                tile_start,
                tiles_n,
                _DTYPE_CODES[weight.dtype],
                int(fa.dtype == torch.float32),
                _MODE_CODES[mode],
            ]
        )
        scale_values.append(problem.scale)
        tile_start += tiles

    meta = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
    scale_tensor = torch.tensor(scale_values, dtype=torch.float32).to(device, non_blocking=True)
    with torch.no_grad():
        _lowrank_commit_kernel[(tile_start,)](
            meta,
            scale_tensor,
            len(problems),
            META_COLUMNS=_META_COLUMNS,
            COMP_FP32=comp_fp32,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            # No FMA contraction: the same rounding steps as the reference on every backend.
            enable_fp_fusion=False,
        )
    # The kernel writes through raw pointers, which autograd cannot see: bump the version
    # counters so a stale saved tensor is caught, then tell the state the write was ours.
    written = [p.weight for p in problems]
    try:
        torch.autograd.graph.increment_version(written)
    except RuntimeError:  # inference tensors have no version counter
        pass
    if state is not None:
        for weight in written:
            state.mark_committed(weight)
