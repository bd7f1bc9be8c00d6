"""Tests for the grouped Triton kernel: interpreted on CPU, compiled for sm_90, native on CUDA.

``TRITON_INTERPRET=1`` must be set before the ``@triton.jit`` functions are defined and would
change every later Triton import in the process, so the interpreted cases run in a child pytest
process with that variable set; in the parent they are represented by one test that runs the
child and reports its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_helpers import random_group

pytest.importorskip("triton")

import lowrank_kernels  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
ROOT = Path(__file__).resolve().parents[1]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _rel_err(x: torch.Tensor, oracle: torch.Tensor) -> float:
    return float((x.double() - oracle).norm() / oracle.norm().clamp_min(1e-30))


def _check_against_reference(weights, a, b, scales, mask=None, mode="master", backend="triton"):
    """Kernel error against an fp64 oracle is at most the reference's (plus a small atol)."""
    chosen = [True] * len(weights) if mask is None else list(mask)
    oracle = [
        w.double() + s * (fb.double().t() @ fa.double()) if on else w.double()
        for w, fa, fb, s, on in zip(weights, a, b, scales, chosen, strict=True)
    ]
    ref = [w.clone() for w in weights]
    out = [w.clone() for w in weights]
    lowrank_kernels.lowrank_update_reference_(
        ref, a, b, scales, mask, state=lowrank_kernels.PrecisionState(mode)
    )
    lowrank_kernels.lowrank_update_(
        out, a, b, scales, mask, state=lowrank_kernels.PrecisionState(mode), backend=backend
    )
    for i, (w0, r, o, want, on) in enumerate(zip(weights, ref, out, oracle, chosen, strict=True)):
        if not on:
            assert torch.equal(o, w0), f"unselected layer {i} was written"
            continue
        assert o.dtype == w0.dtype
        err_ref, err_out = _rel_err(r, want), _rel_err(o, want)
        assert err_out <= 1.05 * err_ref + 2e-6, (i, o.dtype, err_out, err_ref)


# --- interpreted kernel (child process) -----------------------------------------------------

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET child")


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="this is the parent of the interpreted run")
def test_interpreted_kernel_suite():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("KERNELS_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "failed" not in run.stdout, run.stdout[-3000:]


@needs_interpreter
@pytest.mark.parametrize("mode", ["nearest", "compensated", "master"])
def test_mixed_group_every_dtype(mode):
    # Odd sizes, rank 1, a rank larger than one K tile (32), mixed shapes and dtypes, one launch.
    shapes = [(37, 29), (130, 70), (5, 200), (64, 64), (129, 3)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.bfloat16, torch.float16]
    factors = [torch.float32, torch.float32, torch.float32, torch.bfloat16, torch.float16]
    weights, a, b = random_group(shapes, [3, 40, 1, 17, 33], dtypes, factors)
    _check_against_reference(weights, a, b, [0.5, -0.1, 2.0, 0.3, 1.0], mode=mode)


@needs_interpreter
@pytest.mark.parametrize(
    "mask", [[True, True, True], [False, False, False], [True, False, True], [False, True, False]]
)
def test_masks(mask):
    weights, a, b = random_group([(20, 30), (31, 9), (7, 140)], [2, 5, 1], list(DTYPES))
    _check_against_reference(weights, a, b, [1.0, -0.5, 0.25], torch.tensor(mask))


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_dtype_multi_tile(dtype):
    # Several 128 x 128 tiles in both directions, with ragged edges.
    weights, a, b = random_group([(200, 150)], [65], [dtype])
    _check_against_reference(weights, a, b, [0.05])


@needs_interpreter
def test_non_contiguous_factors_and_refused_weight():
    weights, a, b = random_group([(40, 24)], [4], [torch.bfloat16])
    a_t, b_t = a[0].t().contiguous().t(), b[0].t().contiguous().t()
    _check_against_reference(weights, [a_t], [b_t], [0.5])
    with pytest.raises(ValueError, match=r"weights\[0\] is not contiguous"):
        lowrank_kernels.lowrank_update_([weights[0].t()], [b[0]], [a[0]], [1.0], backend="triton")


@needs_interpreter
def test_mixed_factor_dtypes_within_a_layer():
    weights, a, b = random_group([(20, 30)], [3], [torch.bfloat16], [torch.bfloat16])
    _check_against_reference(weights, a, [b[0].float()], [1.5])


@needs_interpreter
def test_kernel_is_deterministic():
    weights, a, b = random_group([(130, 70), (37, 29)], [40, 3], [torch.bfloat16, torch.float32])
    runs = []
    for _ in range(2):
        ws = [w.clone() for w in weights]
        state = lowrank_kernels.PrecisionState("compensated")
        for _ in range(3):
            lowrank_kernels.lowrank_update_(ws, a, b, [0.3, -1.0], state=state, backend="triton")
        runs.append(ws)
    for x, y in zip(*runs, strict=True):
        assert torch.equal(x, y)


@needs_interpreter
def test_kernel_and_reference_states_are_interchangeable():
    # Buffers written by the kernel continue correctly in the reference and vice versa.
    weights, a, b = random_group([(50, 40)], [2], [torch.bfloat16])
    a = [a[0] * 1e-3]
    w1, w2 = weights[0].clone(), weights[0].clone()
    s1, s2 = (
        lowrank_kernels.PrecisionState("compensated"),
        lowrank_kernels.PrecisionState("compensated"),
    )
    for step in range(6):
        first, second = ("triton", "torch") if step % 2 else ("torch", "triton")
        lowrank_kernels.lowrank_update_([w1], a, b, [1.0], state=s1, backend=first)
        lowrank_kernels.lowrank_update_([w2], a, b, [1.0], state=s2, backend=second)
    assert (w1.float() - w2.float()).abs().max() <= 2.0**-7 * w1.float().abs().max()


@needs_interpreter
def test_short_bf16_stream_through_the_kernel():
    g = torch.Generator().manual_seed(1)
    w0 = (1 + torch.rand(32, 48, generator=g)).to(torch.bfloat16)
    a = (0.05 + 0.4 * torch.rand(1, 48, generator=g)) * 2.0**-7  # 0.05-0.45 ulp per step
    b = torch.ones(1, 32)
    steps = 60
    added = steps * float((b.double().t() @ a.double()).sum())
    lost = {}
    for mode in ("nearest", "compensated", "master"):
        w = w0.clone()
        state = lowrank_kernels.PrecisionState(mode)
        for _ in range(steps):
            lowrank_kernels.lowrank_update_([w], [a], [b], [1.0], state=state, backend="triton")
        lost[mode] = abs(float(w.double().sum() - w0.double().sum()) - added) / added
    assert lost["nearest"] > 0.5, lost
    assert lost["compensated"] < 0.01 and lost["master"] < 0.01, lost


# --- compiled for a real GPU target (no GPU needed) -----------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="the interpreter replaces the compiler")
def test_kernel_compiles_for_sm90():
    # Catches what the interpreter accepts but the compiler rejects (e.g. constexpr handling).
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lowrank_kernels import lowrank_update as lu

    cfg = lu.pick_config(64)
    signature = {"meta_ptr": "*i64", "scale_ptr": "*fp32", "num_problems": "i32"}
    constexprs = {
        "META_COLUMNS": lu._META_COLUMNS,
        "COMP_FP32": True,
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k,
    }
    signature.update(dict.fromkeys(constexprs, "constexpr"))
    src = ASTSource(fn=lu._lowrank_commit_kernel, signature=signature, constexprs=constexprs)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "enable_fp_fusion": False}
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    assert compiled.asm["cubin"]
    assert compiled.metadata.shared <= 227 * 1024


# --- native CUDA ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["nearest", "compensated", "master"])
def test_cuda_matches_reference(mode):
    shapes = [(1000, 300), (333, 4096), (17, 5), (4096, 128)]
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.bfloat16]
    factors = [torch.bfloat16, torch.float32, torch.float32, torch.float32]
    weights, a, b = random_group(shapes, [1, 64, 3, 300], dtypes, factors, device="cuda")
    _check_against_reference(weights, a, b, [0.5, -1.0, 2.0, 0.01], [True, True, False, True], mode)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dispatch_is_triton_and_deterministic():
    assert lowrank_kernels.resolve_backend(torch.device("cuda")) == "triton"
    weights, a, b = random_group(
        [(2048, 1024), (1024, 2048)], [16, 16], [torch.bfloat16] * 2, device="cuda"
    )
    runs = []
    for _ in range(2):
        ws = [w.clone() for w in weights]
        lowrank_kernels.lowrank_update_(
            ws, a, b, [0.1, 0.2], state=lowrank_kernels.PrecisionState()
        )
        runs.append(ws)
    for x, y in zip(*runs, strict=True):
        assert torch.equal(x, y)
