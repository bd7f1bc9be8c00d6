"""Tests for the low-rank commit API and its PyTorch reference (CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from kernel_helpers import random_group

import lowrank_kernels
from lowrank_kernels.reference import lowrank_update_reference_

LOW = (torch.bfloat16, torch.float16)


def _oracle(w, a, b, s):
    return w.double() + s * (b.double().t() @ a.double())


def test_matches_fp64_oracle_and_skips_unselected():
    shapes = [(37, 29), (16, 70), (5, 3)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    weights, a, b = random_group(shapes, [3, 1, 7], dtypes)
    before = [w.clone() for w in weights]
    scales = [0.5, -2.0, 0.25]
    lowrank_kernels.lowrank_update_(weights, a, b, scales, [True, False, True])
    assert torch.equal(weights[1], before[1])
    want = _oracle(before[0], a[0], b[0], scales[0])
    assert (weights[0].double() - want).abs().max() <= 1e-5 * want.abs().max()
    # Low precision: accumulate in fp32, round once; within half an ulp (2**-11) of fp64.
    want = _oracle(before[2], a[2], b[2], scales[2])
    assert ((weights[2].double() - want).abs() <= want.abs() * 2.0**-11 + 1e-6).all()


def test_single_rounding_matches_fp32_then_cast():
    weights, a, b = random_group([(64, 48)], [9], [torch.bfloat16])
    want = (weights[0].float() + 0.3 * (b[0].t() @ a[0])).to(torch.bfloat16)
    lowrank_kernels.lowrank_update_(weights, a, b, [0.3])
    assert torch.equal(weights[0], want)


@pytest.mark.parametrize("mask", [None, [True, True], [False, False], torch.tensor([False, True])])
def test_mask_forms(mask):
    weights, a, b = random_group([(8, 6), (4, 5)], [2, 2], [torch.float32, torch.float32])
    before = [w.clone() for w in weights]
    lowrank_kernels.lowrank_update_(weights, a, b, torch.tensor([1.0, 1.0]), mask)
    chosen = [True, True] if mask is None else [bool(m) for m in mask]
    for w, w0, on in zip(weights, before, chosen, strict=True):
        assert torch.equal(w, w0) != on


def test_unselected_factors_may_be_none_and_rank_zero_is_noop():
    weights, a, b = random_group([(8, 6), (4, 5)], [2, 2], [torch.float32, torch.float32])
    before = [w.clone() for w in weights]
    lowrank_kernels.lowrank_update_(weights, [a[0], None], [b[0], None], [1.0, 1.0], [True, False])
    assert not torch.equal(weights[0], before[0]) and torch.equal(weights[1], before[1])
    empty_a, empty_b = torch.zeros(0, 5), torch.zeros(0, 4)
    lowrank_kernels.lowrank_update_([weights[1]], [empty_a], [empty_b], [1.0])
    assert torch.equal(weights[1], before[1])


def test_non_contiguous_factors_are_handled():
    weights, a, b = random_group([(12, 10)], [4], [torch.float32])
    expect = weights[0].clone()
    lowrank_kernels.lowrank_update_([expect], a, b, [0.7])
    a_t = a[0].t().contiguous().t()  # same values, transposed strides
    b_t = b[0].t().contiguous().t()
    assert not a_t.is_contiguous() and not b_t.is_contiguous()
    lowrank_kernels.lowrank_update_(weights, [a_t], [b_t], [0.7])
    assert torch.equal(weights[0], expect)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w, a, b: ([w[1].t()], [a[1]], [b[1]]), r"weights\[0\] is not contiguous"),
        (lambda w, a, b: (w, [a[0], a[0]], b), r"a\[1\] has shape"),
        (lambda w, a, b: (w, a, [b[0], b[1][:1]]), r"a\[1\] has rank 2 but b\[1\] has rank 1"),
        (lambda w, a, b: (w, a, [b[0], b[1].double()]), r"b\[1\] has dtype torch.float64"),
        (lambda w, a, b: ([w[0], w[1].double()], a, b), r"weights\[1\] has dtype"),
        (lambda w, a, b: ([w[0], w[0]], [a[0], a[0]], [b[0], b[0]]), r"share memory"),
        (lambda w, a, b: (w, [a[0], a[1][0]], b), r"a\[1\] must be 2-D"),
    ],
)
def test_bad_inputs_are_refused_before_any_write(change, message):
    weights, a, b = random_group([(6, 5), (4, 8)], [2, 2], [torch.float32, torch.bfloat16])
    ws, fa, fb = change(weights, a, b)
    before = [w.clone() for w in ws]
    with pytest.raises((ValueError, TypeError), match=message):
        lowrank_kernels.lowrank_update_(ws, fa, fb, [1.0] * len(ws))
    for w, w0 in zip(ws, before, strict=True):
        assert torch.equal(w, w0)


def test_bad_lengths_and_backend():
    weights, a, b = random_group([(6, 5)], [2], [torch.float32])
    with pytest.raises(ValueError, match="scales has 2 entries"):
        lowrank_kernels.lowrank_update_(weights, a, b, [1.0, 2.0])
    with pytest.raises(ValueError, match="mask must have shape"):
        lowrank_kernels.lowrank_update_(weights, a, b, [1.0], torch.tensor([True, False]))
    with pytest.raises(ValueError, match="unknown backend"):
        lowrank_kernels.lowrank_update_(weights, a, b, [1.0], backend="cuda")
    with pytest.raises(ValueError, match="unknown precision mode"):
        lowrank_kernels.PrecisionState("stochastic")


def test_dispatch_and_env_override(monkeypatch):
    monkeypatch.delenv("KERNELS_BACKEND", raising=False)
    assert lowrank_kernels.resolve_backend(torch.device("cpu")) == "torch"
    assert lowrank_kernels.resolve_backend(torch.device("cpu"), "triton") == "triton"
    monkeypatch.setenv("KERNELS_BACKEND", "triton")
    assert lowrank_kernels.resolve_backend(torch.device("cpu")) == "triton"
    assert lowrank_kernels.resolve_backend(torch.device("cpu"), "torch") == "torch"


def test_forced_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    weights, a, b = random_group([(6, 5)], [2], [torch.float32])
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        lowrank_kernels.lowrank_update_(weights, a, b, [1.0], backend="triton")


def test_fp32_weights_use_nearest_in_every_mode():
    for mode in ("auto", "compensated", "master"):
        state = lowrank_kernels.PrecisionState(mode)
        weights, a, b = random_group([(8, 8)], [2], [torch.float32])
        expect = weights[0].clone()
        lowrank_kernels.lowrank_update_([expect], a, b, [0.1])
        lowrank_kernels.lowrank_update_(weights, a, b, [0.1], state=state)
        assert torch.equal(weights[0], expect)
        assert state.mode_for(weights[0]) == "nearest"
        assert state.state_dict()["buffers"] == {}


def _stream(mode, steps, shape=(16, 32), backend=None):
    """Commit ``steps`` identical sub-half-ulp updates into bf16; return the relative mass lost."""
    g = torch.Generator().manual_seed(1)
    # Weights in [1, 2): one bf16 ulp is 2**-7; each step adds 0.05-0.45 ulp per element.
    w = (1 + torch.rand(shape, generator=g)).to(torch.bfloat16)
    a = (0.05 + 0.4 * torch.rand(1, shape[1], generator=g)) * 2.0**-7
    b = torch.ones(1, shape[0])
    exact = w.double().sum() + steps * (b.double().t() @ a.double()).sum()
    state = None if mode is None else lowrank_kernels.PrecisionState(mode)
    for _ in range(steps):
        lowrank_kernels.lowrank_update_([w], [a], [b], [1.0], state=state, backend=backend)
    added = steps * (b.double().t() @ a.double()).sum()
    return float((exact - w.double().sum()).abs() / added)


@pytest.mark.slow
def test_long_bf16_stream_exact_modes_keep_the_mass():
    steps = 20_000
    lost = {mode: _stream(mode, steps) for mode in ("nearest", "compensated", "master")}
    assert lost["nearest"] > 0.5, lost
    assert lost["compensated"] < 0.01, lost
    assert lost["master"] < 0.01, lost


def test_bf16_compensation_buffer_in_weight_dtype_is_close():
    g = torch.Generator().manual_seed(2)
    w = (1 + torch.rand(8, 16, generator=g)).to(torch.bfloat16)
    a = (0.05 + 0.4 * torch.rand(1, 16, generator=g)) * 2.0**-7
    b = torch.ones(1, 8)
    exact = w.double().sum() + 2000 * (b.t() @ a).double().sum()
    state = lowrank_kernels.PrecisionState("compensated", compensation_dtype=None)
    for _ in range(2000):
        lowrank_kernels.lowrank_update_([w], [a], [b], [1.0], state=state)
    assert state.state_dict()["buffers"]["0"]["buffer"].dtype == torch.bfloat16
    assert abs(float(w.double().sum() - exact)) / float(2000 * (b.t() @ a).double().sum()) < 0.03


def test_external_write_reseeds_buffers():
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    a, b = torch.full((1, 4), 1e-3), torch.ones(1, 4)
    state = lowrank_kernels.PrecisionState("master")
    for _ in range(50):
        lowrank_kernels.lowrank_update_([w], [a], [b], [1.0], state=state)
    w.copy_(torch.full_like(w, 3.0))  # e.g. reset to the base model
    lowrank_kernels.lowrank_update_([w], [a], [b], [1.0], state=state)
    assert torch.allclose(w.float(), torch.full((4, 4), 3.0), atol=0.02)


def test_state_dict_round_trip_continues_exactly():
    g = torch.Generator().manual_seed(3)
    w = (1 + torch.rand(6, 10, generator=g)).to(torch.bfloat16)
    a = torch.rand(2, 10, generator=g) * 1e-3
    b = torch.rand(2, 6, generator=g)
    for mode in ("master", "compensated"):
        w1 = w.clone()
        state = lowrank_kernels.PrecisionState(mode)
        for _ in range(20):
            lowrank_kernels.lowrank_update_([w1], [a], [b], [1.0], state=state)
        saved = state.state_dict({"layer": w1})
        w2 = w1.clone()
        restored = lowrank_kernels.PrecisionState()
        restored.load_state_dict(saved, {"layer": w2})
        assert restored.mode == mode
        for _ in range(20):
            lowrank_kernels.lowrank_update_([w1], [a], [b], [1.0], state=state)
            lowrank_kernels.lowrank_update_([w2], [a], [b], [1.0], state=restored)
        assert torch.equal(w1, w2)
        by_index = state.state_dict()
        assert list(by_index["buffers"]) == ["0"]
        state.reset()
        assert state.state_dict()["buffers"] == {}


def test_buffers_follow_weight_lifetime():
    state = lowrank_kernels.PrecisionState()
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    lowrank_kernels.lowrank_update_(
        [w], [torch.ones(1, 4)], [torch.ones(1, 4)], [1e-3], state=state
    )
    assert len(state.state_dict()["buffers"]) == 1
    del w
    assert state.state_dict()["buffers"] == {}


def test_reference_is_deterministic():
    weights, a, b = random_group([(70, 50), (33, 17)], [5, 40], [torch.bfloat16, torch.float32])
    copies = [[w.clone() for w in weights] for _ in range(2)]
    for ws in copies:
        lowrank_update_reference_(
            ws, a, b, [0.3, -0.7], state=lowrank_kernels.PrecisionState("master")
        )
    for x, y in zip(*copies, strict=True):
        assert torch.equal(x, y)


def test_importing_kernels_does_not_import_hiedit():
    code = "import sys, lowrank_kernels; assert 'hiedit' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_fresh_views_share_one_buffer():
    # Callers may pass `module.weight.data` (a new tensor object every time).
    param = torch.nn.Parameter(torch.ones(4, 8, dtype=torch.bfloat16), requires_grad=False)
    a, b = torch.full((1, 8), 2.0**-10), torch.ones(1, 4)
    state = lowrank_kernels.PrecisionState("master")
    for _ in range(64):
        lowrank_kernels.lowrank_update_([param.data], [a], [b], [1.0], state=state)
    assert len(state.state_dict()["buffers"]) == 1
    assert torch.allclose(param.float(), torch.full((4, 8), 1 + 64 * 2.0**-10), atol=2.0**-7)
