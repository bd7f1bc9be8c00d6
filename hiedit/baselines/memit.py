"""MEMIT (Meng et al., "Mass-Editing Memory in a Transformer", ICLR 2023) as a sequential editor.

Targets, keys and the spreading of the residual over the edited layers are the shared
locate-then-edit steps (:mod:`hiedit.baselines.locate`). Per edited layer, with keys ``K``
(n × d_in, one row per record) and residuals ``R`` (n × d_out), MEMIT's closed form (paper
eq. 14) is

    ΔW = Rᵀ K (λ C + Kᵀ K)⁻¹,

``C = E[k kᵀ]`` the key statistic of generic text (:mod:`hiedit.baselines.key_stats`) and
``λ = mom2_update_weight``. It is solved in fp64 as MEMIT does, ``X = (λC + KᵀK)⁻¹ Kᵀ``
(d_in × n), and committed as the rank-n product ``ΔW = Rᵀ Xᵀ``. As in MEMIT's sequential use,
each edit's update is solved against the generic statistic alone: earlier edits' keys are not
accumulated (that is AlphaEdit's, :mod:`hiedit.baselines.alphaedit`).

Defaults are the public Llama-3-8B configuration (AlphaEdit repository,
``hparams/MEMIT/Llama3-8B.json``: layers 4–8, λ = 15000, ``v_lr`` 0.1, 25 steps, weight decay
0.5, clamp 0.75, KL factor 0.0625).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hiedit.baselines.key_stats import load_key_stats
from hiedit.baselines.locate import LayerUpdate, LocateConfig, LocateThenEdit, read_section, setting

WHERE = "baselines.memit"


@dataclass(frozen=True)
class MEMITConfig(LocateConfig):
    """``baselines.memit``: the shared locate settings plus MEMIT's ``mom2_update_weight`` λ."""

    mom2_update_weight: float = setting(15000.0, kind=float, ge=0)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str = WHERE) -> MEMITConfig:
        return read_section(cls, values, where)


class MEMITEditor(LocateThenEdit):
    """Sequential MEMIT on the down-projections ``module_names`` (module docstring)."""

    kind = "memit"

    def solve(self, index, keys, residuals) -> LayerUpdate:
        import torch

        system = self.settings.mom2_update_weight * self.second_moments[index] + keys.T @ keys
        adjusted = torch.linalg.solve(system, keys.T)  # d_in × n
        return LayerUpdate(a=adjusted.T.contiguous(), b=residuals.contiguous())


def build(
    settings: MEMITConfig,
    model,
    tokenizer,
    *,
    module_names: list[str],
    seed: int,
    stats,
) -> MEMITEditor:
    """A MEMIT editor on ``module_names`` with the fitted key statistic ``stats``."""
    return MEMITEditor(
        settings, model, tokenizer, module_names=module_names, seed=seed, stats=stats, where=WHERE
    )


CONFIG = MEMITConfig
load_stats = load_key_stats
