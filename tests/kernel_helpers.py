"""Shared by the kernel tests: a seeded random group of weights and low-rank factors."""

from __future__ import annotations

import torch


def random_group(shapes, ranks, dtypes, factor_dtypes=None, seed=0, device="cpu"):
    """Weights ``(d_out, d_in)`` of ``dtypes`` and factors A (n × d_in), B (n × d_out) per module."""
    g = torch.Generator().manual_seed(seed)
    factor_dtypes = factor_dtypes or [torch.float32] * len(shapes)
    weights, a, b = [], [], []
    for (d_out, d_in), n, dt, fd in zip(shapes, ranks, dtypes, factor_dtypes, strict=True):
        weights.append(torch.randn(d_out, d_in, generator=g).to(device=device, dtype=dt))
        a.append(torch.randn(n, d_in, generator=g).to(device=device, dtype=fd))
        b.append(torch.randn(n, d_out, generator=g).to(device=device, dtype=fd))
    return weights, a, b
