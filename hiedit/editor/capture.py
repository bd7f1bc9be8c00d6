"""Gradient capture: module input rows u and output gradients δ for one edit, held in memory.

One forward and backward of the current model on the edit tuples. Forward hooks record each
candidate module's input and output; the output gradients come from ``torch.autograd.grad`` on
those outputs, so no parameter gradient is ever computed and the backward stops at the earliest
candidate module. Rows are kept for every attended position (``token: all``, MEND style) or for
the answer positions only (``token: ans``, MALMEN style), in fp32. The loss is taken on the
model's own logits (:func:`~hiedit.models.head.output_logits`, e.g. Gemma-2's soft-capped ones),
computed at the answer positions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hiedit.data.tokenize import IGNORE_INDEX, Batch
from hiedit.models.head import output_logits

TOKEN_MODES = ("all", "ans")


@dataclass
class Capture:
    """Rows of one candidate module: inputs ``u`` (n × d_in) and output gradients ``delta`` (n × d_out)."""

    u: torch.Tensor
    delta: torch.Tensor

    @property
    def rows(self) -> torch.Tensor:
        """``[u ; δ]`` (n × (d_in + d_out)), the networks' input."""
        return torch.cat([self.u, self.delta], dim=1)


def position_nll(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sum over rows of each row's mean NLL, from logits (P × V) at the answer positions only."""
    nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    n_rows = int(rows.max()) + 1 if rows.numel() else 0
    sums = nll.new_zeros(n_rows).index_add(0, rows, nll)
    counts = nll.new_zeros(n_rows).index_add(0, rows, torch.ones_like(nll))
    return (sums / counts.clamp_min(1)).sum()


def row_mask(batch: Batch, token: str) -> torch.Tensor:
    """Boolean (B × T) mask of the positions whose rows are captured."""
    if token == "all":
        return batch.attention_mask.bool()
    if token == "ans":
        return batch.labels != IGNORE_INDEX
    raise ValueError(f"token must be one of {TOKEN_MODES}, got {token!r}")


def capture_gradients(
    model: nn.Module, modules: Sequence[nn.Linear], batch: Batch, token: str = "all"
) -> tuple[list[Capture], float]:
    """Capture (u, δ) for every module in ``modules`` on ``batch``; returns captures and the loss.

    The loss is the mean NLL over each edit's answer positions, summed over the edits, so one
    edit's gradient does not shrink when several are edited in one step.
    """
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            inputs[index] = args[0].detach()
            if not output.requires_grad:
                # The model's weights are frozen: make the first candidate output a leaf so the
                # backward reaches it (and stops there).
                output = output.detach().requires_grad_(True)
            outputs[index] = output
            return output

        return hook

    for index, module in enumerate(modules):
        handles.append(module.register_forward_hook(make_hook(index)))
    try:
        with torch.enable_grad():
            # The head only at the answer positions: it is the largest matrix of a small model.
            hidden = model.get_decoder()(**batch.model_inputs(), use_cache=False).last_hidden_state
            positions = batch.labels != IGNORE_INDEX
            logits = output_logits(model, hidden[positions])
            loss = position_nll(logits, batch.labels[positions], positions.nonzero()[:, 0])
            order = sorted(outputs)
            grads = torch.autograd.grad(loss, [outputs[i] for i in order])
    finally:
        for handle in handles:
            handle.remove()
    keep = row_mask(batch, token)
    captures = []
    for index, grad in zip(order, grads, strict=True):
        captures.append(Capture(u=inputs[index][keep].float(), delta=grad[keep].float()))
    if len(captures) != len(modules):
        missing = sorted(set(range(len(modules))) - set(order))
        raise RuntimeError(f"candidate modules {missing} were not called in the forward pass")
    return captures, float(loss.detach())
