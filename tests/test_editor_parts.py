"""Editor building blocks: normaliser, low-rank algebra, router selection and its gradients, side path."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hiedit.editor.capture import Capture
from hiedit.editor.lowlevel import Factors, LowLevelNet, malmen_push_through
from hiedit.editor.normalizer import RunningNormalizer
from hiedit.editor.router import (
    gumbel_topk,
    plackett_luce_log_prob,
    straight_through,
    topk_mask,
)


def test_normalizer_matches_concatenated_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 5, generator=g) * 3 + 2 for n in (1, 7, 2, 30, 4)]
    norm = RunningNormalizer(5)
    for b in batches:
        norm.update(b)
    everything = torch.cat(batches).double()
    assert int(norm.count) == everything.shape[0]
    torch.testing.assert_close(norm.mean, everything.mean(0))
    torch.testing.assert_close(norm.variance(), everything.var(0))
    out = norm(everything.float())
    torch.testing.assert_close(out.mean(0), torch.zeros(5), atol=1e-5, rtol=0)


def test_normalizer_is_identity_before_any_rows():
    norm = RunningNormalizer(3)
    x = torch.randn(4, 3)
    torch.testing.assert_close(norm(x), x)


def test_gram_form_norm_equals_dense_norm():
    g = torch.Generator().manual_seed(1)
    f = Factors(torch.randn(6, 11, generator=g), torch.randn(6, 7, generator=g), torch.tensor(-0.3))
    dense = f.dense()
    assert dense.shape == (7, 11)
    torch.testing.assert_close(f.frob_sq(), (dense**2).sum())


def test_malmen_push_through_equals_direct_formula():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(5, 9, generator=g, dtype=torch.float64)
    v = torch.randn(5, 4, generator=g, dtype=torch.float64)
    log_lambda = torch.tensor(0.3, dtype=torch.float64)
    lam = math.exp(0.3)
    direct = v.t() @ u @ torch.linalg.inv(u.t() @ u + lam * torch.eye(9, dtype=torch.float64))
    b = malmen_push_through(u, v, log_lambda)
    torch.testing.assert_close(b.t() @ u, direct)


@pytest.mark.parametrize("style", ["mend", "malmen"])
def test_lowlevel_net_starts_as_identity_and_returns_factors(style):
    net = LowLevelNet(
        4, 6, 2, rank=3, n_blocks=2, lr=0.5, style=style, generator=torch.Generator().manual_seed(0)
    )
    g = torch.Generator().manual_seed(3)
    caps = [
        Capture(torch.randn(3, 4, generator=g), torch.randn(3, 6, generator=g)) for _ in range(2)
    ]
    factors = net(caps, [0, 1])
    assert len(factors) == 2
    for cap, f in zip(caps, factors, strict=True):
        assert f.a.shape == (3, 4) and f.b.shape == (3, 6)
        if style == "mend":
            # Zero-initialised up-projections: the output is the (identity-normalised) input.
            torch.testing.assert_close(f.a, cap.u)
            torch.testing.assert_close(f.b, cap.delta)
            torch.testing.assert_close(f.scale, torch.tensor(-0.5))
        else:
            torch.testing.assert_close(f.a, cap.u)


def test_topk_mask_has_exactly_k_ones():
    g = torch.Generator().manual_seed(4)
    for k in (1, 3, 5):
        mask = topk_mask(torch.randn(7, generator=g), k)
        assert int(mask.sum()) == k
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        hard, order, _ = gumbel_topk(torch.randn(7, generator=g), k, 1.0, g)
        assert int(hard.sum()) == k and len(set(order.tolist())) == k


def test_straight_through_passes_the_hard_mask_forward_and_identity_backward():
    z = torch.tensor([0.2, -1.0, 3.0, 0.5], requires_grad=True)
    hard = topk_mask(z.detach(), 2)
    m = straight_through(hard, z)
    torch.testing.assert_close(m.detach(), hard)
    coef = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (m * coef).sum().backward()
    torch.testing.assert_close(z.grad, coef)  # d/dz Σ c_l m_l = c (hand-derived)


def test_plackett_luce_probabilities_sum_to_one_and_match_gumbel_frequencies():
    logits = torch.tensor([0.5, -0.2, 1.0, 0.0])
    total = 0.0
    probs = {}
    for order in itertools.permutations(range(4), 2):
        p = plackett_luce_log_prob(logits, torch.tensor(order)).exp().item()
        probs[order] = p
        total += p
    assert total == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(5)
    draws = 4000
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(draws):
        _, order, _ = gumbel_topk(logits, 2, 1.0, g)
        key = tuple(order.tolist())
        counts[key] = counts.get(key, 0) + 1
    for order, p in probs.items():
        assert counts.get(order, 0) / draws == pytest.approx(p, abs=0.03)


def test_score_function_gradient_matches_finite_difference():
    z = torch.tensor([0.3, -0.4, 0.9, 0.1, -1.2], dtype=torch.float64, requires_grad=True)
    order = torch.tensor([2, 0, 3])
    reward = 0.7
    objective = -reward * plackett_luce_log_prob(z / 0.5, order)
    objective.backward()
    eps = 1e-6
    for i in range(5):
        plus, minus = z.detach().clone(), z.detach().clone()
        plus[i] += eps
        minus[i] -= eps
        fd = (
            -reward
            * (
                plackett_luce_log_prob(plus / 0.5, order)
                - plackett_luce_log_prob(minus / 0.5, order)
            )
            / (2 * eps)
        )
        assert z.grad[i].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)


def test_every_lowlevel_parameter_gets_a_gradient_at_initialisation():
    net = LowLevelNet(
        4, 6, 2, rank=3, n_blocks=2, lr=0.5, generator=torch.Generator().manual_seed(0)
    )
    g = torch.Generator().manual_seed(6)
    caps = [
        Capture(torch.randn(3, 4, generator=g), torch.randn(3, 6, generator=g)) for _ in range(2)
    ]
    target = torch.randn(6, 4, generator=g)
    loss = sum(((f.dense() - target) ** 2).sum() for f in net(caps, [0, 1]))
    loss.backward()
    for name, param in net.named_parameters():
        if name.startswith("down.") or name == "module_scale":
            continue  # both multiply the zero-initialised up-projection path: no gradient yet
        assert param.grad is not None and param.grad.abs().sum() > 0, name
