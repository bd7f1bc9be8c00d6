"""Running per-feature mean and standard deviation of captured rows (Chan's parallel merge).

Both the low-level network and the router's gradient encoder normalise their inputs
``[u ; δ]`` with statistics accumulated over every capture seen so far. Batches are merged with
Chan et al.'s formula, so the result equals the mean and unbiased variance of all rows
concatenated, whatever the batch sizes.
"""

from __future__ import annotations

import torch
from torch import nn


class RunningNormalizer(nn.Module):
    """Per-feature running mean/std over rows, kept in float64 buffers (saved in ``state_dict``)."""

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, rows: torch.Tensor) -> None:
        """Merge the statistics of ``rows`` (n × dim) into the running ones."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape (n, {self.dim}), got {tuple(rows.shape)}")
        n_b = rows.shape[0]
        if n_b == 0:
            return
        rows = rows.detach().to(torch.float64)
        mean_b = rows.mean(0)
        m2_b = ((rows - mean_b) ** 2).sum(0)
        n_a = self.count.clone()
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + delta**2 * (n_a * n_b / total)
        self.count.copy_(total)

    def variance(self) -> torch.Tensor:
        """Unbiased variance (ones until two rows have been seen)."""
        if self.count < 2:
            return torch.ones_like(self.m2)
        return self.m2 / (self.count - 1)

    def std(self) -> torch.Tensor:
        return self.variance().sqrt()

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """``(rows - mean) / (std + eps)`` in the rows' dtype."""
        mean = self.mean.to(rows.dtype)
        scale = (self.std() + self.eps).to(rows.dtype)
        return (rows - mean) / scale
