"""High-level router (docs/method.md §4): scores every candidate module from its captured gradient rows.

A gradient encoder per shape group (its own running normaliser, a linear map D → H, ReLU) with
a per-module scale and offset (the paper's SPE_l) gives h_{m,t}; the mean over rows of each module
is concatenated and a gate H·L → L produces the scores z. Selection turns z into a K-hot mask:
deterministic top-K at inference, Gumbel-top-K sampling with its Plackett–Luce log-probability
during training, with a straight-through estimator (``m = hard + z − sg(z)``) for the pathwise
gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hiedit.editor.normalizer import RunningNormalizer


class GradientEncoder(nn.Module):
    """Shared encoder of one shape group with per-module scale and offset."""

    def __init__(
        self, dim: int, hidden: int, n_modules: int, generator: torch.Generator | None
    ) -> None:
        super().__init__()
        self.normalizer = RunningNormalizer(dim)
        self.linear = nn.Linear(dim, hidden)
        with torch.no_grad():
            bound = 1.0 / dim**0.5
            self.linear.weight.uniform_(-bound, bound, generator=generator)
            self.linear.bias.uniform_(-bound, bound, generator=generator)
        self.module_scale = nn.Parameter(torch.ones(n_modules, hidden))
        self.module_offset = nn.Parameter(torch.zeros(n_modules, hidden))

    def forward(self, rows: torch.Tensor, module: int) -> torch.Tensor:
        """Mean over rows of ``s_m ⊙ ReLU(Lin(norm(rows))) + o_m`` (a vector of size H)."""
        h = torch.relu(self.linear(self.normalizer(rows)))
        return (h * self.module_scale[module] + self.module_offset[module]).mean(0)


class Router(nn.Module):
    """Scores z ∈ R^L for the L candidate modules; ``groups[l]`` is module l's shape-group key."""

    def __init__(
        self,
        groups: Sequence[str],
        dims: dict[str, int],
        hidden: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.groups = list(groups)
        self.local_index = []
        counts: dict[str, int] = {}
        for key in self.groups:
            self.local_index.append(counts.get(key, 0))
            counts[key] = counts.get(key, 0) + 1
        self.encoders = nn.ModuleDict(
            {key: GradientEncoder(dims[key], hidden, counts[key], generator) for key in counts}
        )
        n = len(self.groups)
        self.gate = nn.Linear(hidden * n, n)
        with torch.no_grad():
            bound = 1.0 / (hidden * n) ** 0.5
            self.gate.weight.uniform_(-bound, bound, generator=generator)
            self.gate.bias.zero_()

    def normalizers(self) -> dict[str, RunningNormalizer]:
        return {key: enc.normalizer for key, enc in self.encoders.items()}

    def forward(self, rows: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scores z (L) from each module's rows ``[u ; δ]``."""
        features = [
            self.encoders[key](r, local)
            for r, key, local in zip(rows, self.groups, self.local_index, strict=True)
        ]
        return self.gate(torch.cat(features))


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Hard K-hot mask of the K largest scores (float, same shape)."""
    mask = torch.zeros_like(scores)
    mask[scores.topk(k).indices] = 1.0
    return mask


def straight_through(hard: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``hard + z − sg(z)``: the hard mask forward, identity gradient to the scores backward."""
    return hard + scores - scores.detach()


def gumbel_topk(
    scores: torch.Tensor, k: int, tau: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample K modules without replacement (Gumbel-top-K of z/τ).

    Returns the hard mask, the sampled indices in order, and the Plackett–Luce log-probability of
    that ordered sample: ``Σ_i [s_{σ_i} − logsumexp(s_j : j not yet chosen)]`` with ``s = z/τ``.
    """
    logits = scores / tau
    uniform = torch.rand(scores.shape, generator=generator, dtype=scores.dtype).clamp_(1e-20, 1.0)
    gumbel = -torch.log(-torch.log(uniform))
    order = (logits.detach() + gumbel).topk(k).indices
    return topk_mask_from(order, scores), order, plackett_luce_log_prob(logits, order)


def topk_mask_from(indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(like, dtype=like.dtype).detach()
    mask[indices] = 1.0
    return mask


def plackett_luce_log_prob(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Log-probability of drawing ``order`` (without replacement) under softmax sampling of ``logits``."""
    available = torch.ones_like(logits, dtype=torch.bool)
    total = logits.new_zeros(())
    for index in order.tolist():
        total = (
            total
            + logits[index]
            - torch.logsumexp(logits.masked_fill(~available, float("-inf")), 0)
        )
        available = available.clone()
        available[index] = False
    return total
