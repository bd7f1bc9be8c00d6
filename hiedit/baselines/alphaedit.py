"""AlphaEdit (Fang et al., "AlphaEdit: Null-Space Constrained Knowledge Editing", ICLR 2025).

MEMIT's targets, keys and residual spreading (:mod:`hiedit.baselines.locate`), with the update
projected onto the null space of the preserved keys. From the key statistic
``C = E[k kᵀ] = U Λ Uᵀ`` of generic text (the same statistic as MEMIT's) the eigenvectors ``Û``
whose eigenvalues are below ``nullspace_threshold`` give the projector ``P = Û Ûᵀ``
(the public code's ``get_project``, which takes the SVD of the same matrix). Per edited layer,
with the current keys ``K`` (n × d_in), residuals ``R`` (n × d_out) and the accumulated
``Kpᵀ Kp`` of every earlier edit of the stream (d_in × d_in, kept in the editor state):

    ΔWᵀ = (P (Kpᵀ Kp + Kᵀ K) + l2 · I)⁻¹ P Kᵀ R,

which is the paper's ``Δ = R K₁ᵀ P (Kp Kpᵀ P + K₁ K₁ᵀ P + I)⁻¹`` (their column-key notation) with
the public code's ``L2`` in place of the identity's unit weight (``AlphaEdit_main.py``:
``solve(P @ (K Kᵀ + cache_c) + L2 · I, P @ K @ residᵀ)``). The columns of ``ΔWᵀ`` lie in the range
of ``P`` (``P(A + ...)`` maps that range into itself), so ``ΔW k = 0`` exactly for every key
``k`` orthogonal to it, i.e. in the span of the generic text's principal directions: the outputs
of the preserved keys do not move. After all layers of a step are committed, each layer's keys
are captured again at the new weights and added to ``Kpᵀ Kp`` (as the public code does).

Solved in the null space itself: with ``P = Û Ûᵀ`` (``Û`` d_in × r, orthonormal columns) and the
solution written ``ΔWᵀ = Û Y`` (it lies in the range of ``P``), multiplying the system by ``Ûᵀ``
gives the r × r symmetric positive definite system

    (Ûᵀ Kpᵀ Kp Û + (K Û)ᵀ (K Û) + l2 · I) Y = (K Û)ᵀ,

the same solution without the dense d_in × d_in product and LU of every edit: the editor keeps
``G = Ûᵀ Kpᵀ Kp Û`` (r × r, grown by ``(K Û)ᵀ (K Û)`` after each step) instead of ``Kpᵀ Kp``, and
solves by Cholesky — 4–20× faster per layer at SmolLM2's width (1536) depending on r, and
smaller to keep and save (r ≤ d_in).

Defaults: the public Llama-3-8B configuration (``hparams/AlphaEdit/Llama3-8B.json``:
``nullspace_threshold`` 2e-2, ``L2`` 10, and the same layers and target settings as MEMIT's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hiedit.baselines.key_stats import load_key_stats
from hiedit.baselines.locate import (
    LayerUpdate,
    LocateConfig,
    LocateThenEdit,
    keys_and_outputs,
    read_section,
    setting,
)
from hiedit.errors import CheckpointMismatchError

WHERE = "baselines.alphaedit"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlphaEditConfig(LocateConfig):
    """``baselines.alphaedit``: the shared locate settings plus the null space and ridge weight."""

    nullspace_threshold: float = setting(2e-2, kind=float, gt=0)
    l2: float = setting(10.0, kind=float, gt=0)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str = WHERE) -> AlphaEditConfig:
        return read_section(cls, values, where)


def null_space_basis(second_moment, threshold: float):
    """Orthonormal columns (d × r, fp64) spanning the eigenvectors of ``second_moment`` with
    eigenvalue below ``threshold``: the directions AlphaEdit may write into."""
    import torch

    eigenvalues, eigenvectors = torch.linalg.eigh(second_moment.to(torch.float64))
    return eigenvectors[:, eigenvalues < threshold].contiguous()


def null_space_solve(basis, gram, keys, l2: float):
    """``ΔWᵀ``'s key factor ``X = Û Y`` (d_in × n) with ``(G + (K Û)ᵀ (K Û) + l2 · I) Y = (K Û)ᵀ``
    (module docstring): ``basis`` Û (d_in × r), ``gram`` G (r × r), ``keys`` K (n × d_in)."""
    import torch

    projected = keys @ basis  # K Û (n × r)
    eye = torch.eye(basis.shape[1], dtype=basis.dtype, device=basis.device)
    system = gram + projected.T @ projected + l2 * eye
    return basis @ torch.cholesky_solve(projected.T, torch.linalg.cholesky(system))


class AlphaEditEditor(LocateThenEdit):
    """Sequential AlphaEdit on the down-projections ``module_names`` (module docstring)."""

    kind = "alphaedit"

    def __init__(self, settings: AlphaEditConfig, model, tokenizer, **kwargs) -> None:
        import torch

        super().__init__(settings, model, tokenizer, **kwargs)
        self.bases = []
        self.null_dims = []
        for name, moment in zip(self.module_names, self.second_moments, strict=True):
            basis = null_space_basis(moment, settings.nullspace_threshold)
            dim = int(basis.shape[1])
            self.bases.append(basis)
            self.null_dims.append(dim)
            log.info("%s: null space of dimension %d of %d", name, dim, moment.shape[0])
            if dim == 0:
                log.warning(
                    "%s: no eigenvalue of the key statistic is below %g; every update is zero",
                    name,
                    settings.nullspace_threshold,
                )
        # The generic statistic is only needed for the null spaces.
        self.second_moments = [None] * len(self.modules)
        # G = Ûᵀ Kpᵀ Kp Û per module (r × r, fp64): the earlier edits' keys, in the null space.
        self.null_gram = [
            torch.zeros(dim, dim, dtype=basis.dtype, device=basis.device)
            for basis, dim in zip(self.bases, self.null_dims, strict=True)
        ]

    def solve(self, index, keys, residuals) -> LayerUpdate:
        adjusted = null_space_solve(
            self.bases[index], self.null_gram[index], keys, self.settings.l2
        )
        return LayerUpdate(a=adjusted.T.contiguous(), b=residuals.contiguous())

    def after_step(self, records) -> None:
        for index, module in enumerate(self.modules):
            keys, _ = keys_and_outputs(
                self.model, self.tokenizer, records, self.prefixes, module, self.z_layer
            )
            projected = keys @ self.bases[index]
            self.null_gram[index] += projected.T @ projected

    def extra_state(self) -> dict[str, Any]:
        return {
            "null_gram": {
                name: gram.detach().clone()
                for name, gram in zip(self.module_names, self.null_gram, strict=True)
            },
            "null_dims": list(self.null_dims),
        }

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "null_gram" not in state:
            raise CheckpointMismatchError(
                "an AlphaEdit state from before the null-space solver (it holds Kpᵀ Kp, not "
                "Ûᵀ Kpᵀ Kp Û): delete the stream's resume-state folder to start it over"
            )
        if list(state["null_dims"]) != self.null_dims:
            raise CheckpointMismatchError(
                f"null-space dimensions {state['null_dims']} differ from {self.null_dims}"
            )
        for index, name in enumerate(self.module_names):
            self.null_gram[index].copy_(state["null_gram"][name])


def build(
    settings: AlphaEditConfig,
    model,
    tokenizer,
    *,
    module_names: list[str],
    seed: int,
    stats,
) -> AlphaEditEditor:
    """An AlphaEdit editor on ``module_names`` with the fitted key statistic ``stats``."""
    return AlphaEditEditor(
        settings,
        model,
        tokenizer,
        module_names=module_names,
        seed=seed,
        stats=stats,
        where=WHERE,
    )


CONFIG = AlphaEditConfig
load_stats = load_key_stats
