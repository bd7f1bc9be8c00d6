"""Low-level editor network (docs/method.md §3): maps captured rows to a low-rank update per module.

One network per shape group ``(d_in, d_out)``, shared by the group's modules. Rows
``x̂ = norm([u ; δ])`` pass through residual low-rank blocks with per-module scale and shift;
the output splits into pseudo-keys ũ and pseudo value-gradients δ̃. The update is returned as
factors ``(A, B, scale)`` with ``Δ = scale · Bᵀ A`` (A: n × d_in, B: n × d_out); the dense
``d_out × d_in`` matrix is never formed here.

- MEND style: ``A = ũ``, ``B = δ̃``, ``scale = −η_m``.
- MALMEN style: values ``v_t = −η_m ⟨u_t, ũ_t⟩ δ̃_t`` and the ridge solution
  ``Δ = Vᵀ U (UᵀU + e^{λ_m} I)⁻¹ = Vᵀ (U Uᵀ + e^{λ_m} I)⁻¹ U`` (push-through, an n × n solve):
  ``A = U``, ``B = (U Uᵀ + e^{λ_m} I)⁻¹ V``, ``scale = 1``.

The step size is parametrised as ``η_m = lr · exp(ρ_m)`` (ρ init 0): Adam then moves it by a
relative amount per step, whatever the magnitude of ``lr``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hiedit.editor.normalizer import RunningNormalizer

STYLES = ("mend", "malmen")


@dataclass
class Factors:
    """A low-rank update ``Δ = scale · Bᵀ A`` (A: n × d_in, B: n × d_out, scale a 0-d tensor)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: torch.Tensor

    def dense(self) -> torch.Tensor:
        """The materialised ``d_out × d_in`` update (tests and debugging only)."""
        return self.scale * self.b.t() @ self.a

    def frob_sq(self) -> torch.Tensor:
        """``‖Δ‖²_F`` from two n × n Gram matrices: ``scale² · Σ (A Aᵀ) ⊙ (B Bᵀ)``."""
        return self.scale**2 * ((self.a @ self.a.t()) * (self.b @ self.b.t())).sum()

    def detached(self) -> Factors:
        return Factors(self.a.detach(), self.b.detach(), self.scale.detach())

    def leaf_copy(self) -> Factors:
        """Detached copies that collect their own ``.grad`` (to be carried back in one backward)."""
        return Factors(*(t.detach().requires_grad_() for t in (self.a, self.b, self.scale)))


def malmen_push_through(u: torch.Tensor, v: torch.Tensor, log_lambda: torch.Tensor) -> torch.Tensor:
    """``(U Uᵀ + e^λ I)⁻¹ V`` (n × d_out): with ``A = U`` it gives ``Δ = Vᵀ (UUᵀ + e^λ I)⁻¹ U``."""
    n = u.shape[0]
    gram = u @ u.t() + torch.exp(log_lambda) * torch.eye(n, dtype=u.dtype, device=u.device)
    return torch.linalg.solve(gram, v)


class LowLevelNet(nn.Module):
    """The editor network of one shape group (``n_modules`` modules of shape d_out × d_in)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_modules: int,
        *,
        rank: int,
        n_blocks: int,
        lr: float,
        style: str = "mend",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.d_in, self.d_out, self.style = d_in, d_out, style
        dim = d_in + d_out
        self.normalizer = RunningNormalizer(dim)
        self.down = nn.ParameterList()
        self.up = nn.ParameterList()
        self.bias = nn.ParameterList()
        for _ in range(n_blocks):
            a = torch.empty(dim, rank)
            nn.init.kaiming_uniform_(a.t(), a=5**0.5, generator=generator)
            self.down.append(nn.Parameter(a))
            # Zero up-projection: every block starts as the identity.
            self.up.append(nn.Parameter(torch.zeros(rank, dim)))
            self.bias.append(nn.Parameter(torch.zeros(dim)))
        self.module_scale = nn.Parameter(torch.ones(n_modules, n_blocks, dim))
        self.module_shift = nn.Parameter(torch.zeros(n_modules, n_blocks, dim))
        self.base_lr = float(lr)
        self.log_lr = nn.Parameter(torch.zeros(n_modules))
        if style == "malmen":
            self.log_lambda = nn.Parameter(torch.zeros(n_modules))

    def step_size(self, module: int) -> torch.Tensor:
        """η_m."""
        return self.base_lr * torch.exp(self.log_lr[module])

    def transform(self, rows: torch.Tensor, module_index: torch.Tensor) -> torch.Tensor:
        """Map raw rows ``[u ; δ]`` (N × D) of modules ``module_index`` (N) to ``[ũ ; δ̃]``."""
        h = self.normalizer(rows)
        for block in range(len(self.down)):
            scale = self.module_scale[module_index, block]
            shift = self.module_shift[module_index, block]
            # clamp_min, not relu: at initialisation the argument is exactly 0 (zero up-projection
            # and bias) and relu's gradient there is 0, which would leave the block dead forever;
            # clamp_min passes the gradient at 0.
            inner = (h @ self.down[block] @ self.up[block] + self.bias[block]).clamp_min(0)
            h = h + scale * inner + shift
        return h

    def forward(self, captures: list, modules: list[int]) -> list[Factors]:
        """Factors for each ``(capture, module)`` pair, all modules in one batched pass."""
        rows = torch.cat([c.rows for c in captures], dim=0)
        index = torch.cat(
            [
                torch.full((c.u.shape[0],), m, dtype=torch.long)
                for c, m in zip(captures, modules, strict=True)
            ]
        )
        out = self.transform(rows, index)
        factors = []
        start = 0
        for capture, module in zip(captures, modules, strict=True):
            n = capture.u.shape[0]
            part = out[start : start + n]
            start += n
            pseudo_u, pseudo_delta = part[:, : self.d_in], part[:, self.d_in :]
            eta = self.step_size(module)
            if self.style == "mend":
                factors.append(Factors(pseudo_u, pseudo_delta, -eta))
            else:
                keys = capture.u
                values = -eta * (keys * pseudo_u).sum(1, keepdim=True) * pseudo_delta
                b = malmen_push_through(keys, values, self.log_lambda[module])
                factors.append(Factors(keys, b, torch.ones((), dtype=b.dtype)))
        return factors
