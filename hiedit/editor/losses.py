"""The low-level loss L_low (method §5) evaluated through the side path, and its pieces.

``L_low(ω) = η_reg Σ_l ‖ω_l Δ_l‖²_F + Σ_j μ^j [CE(W_t + ωΔ; equiv_{t−j})
+ λ_loc · KL(p_{W_t} ‖ p_{W_t+ωΔ}; unrel_{t−j})]`` over the last ``back_depth`` edits of the
trajectory (memory backtracking). All backtracked equiv and unrel tuples are padded into one
batch; logits are computed only at the answer positions (the LM head is the costliest layer of a
small model). One no-grad forward gives both the KL targets (rows at W_t, mask 0) and, when
needed, L_low(1) (rows under the full mask) by weighting the side path per batch row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hiedit.data.records import EditRecord
from hiedit.data.tokenize import IGNORE_INDEX, Batch, encode_qa
from hiedit.editor.lowlevel import Factors
from hiedit.editor.prefix import PrefixCache
from hiedit.editor.sidepath import side_path


@dataclass
class ScoringBatch:
    """Backtracked tuples: rows ``[0, R)`` are equiv tuples, rows ``[R, 2R)`` unrel tuples."""

    batch: Batch
    weights: torch.Tensor  # (R,) time-decay weight μ^j of each record
    n_records: int


@dataclass
class LossParts:
    """L_low and its pieces (tensors; ``total`` carries the autograd graph when built with grad)."""

    total: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    l2: torch.Tensor


def scoring_batch(
    tokenizer, window: Sequence[Sequence[EditRecord]], time_decay: float, device
) -> ScoringBatch:
    """Pad the equiv and unrel tuples of ``window`` (oldest step first) into one batch."""
    records: list[EditRecord] = []
    weights: list[float] = []
    newest = len(window) - 1
    for age_index, step_records in enumerate(window):
        age = newest - age_index
        for record in step_records:
            records.append(record)
            weights.append(time_decay**age)
    qas = [r.equiv for r in records] + [r.unrel for r in records]
    batch = encode_qa(tokenizer, [q.prompt for q in qas], [q.target for q in qas]).to(device)
    return ScoringBatch(batch, torch.tensor(weights, device=device), len(records))


def answer_logits(
    model: nn.Module, batch: Batch, prefix: PrefixCache | None = None
) -> torch.Tensor:
    """Logits (P × V) at the answer positions of ``batch`` (row-major order), in fp32.

    With ``prefix``, the unedited lower layers come from its cache.
    """
    if prefix is not None:
        hidden = prefix.last_hidden_state(batch)
    else:
        hidden = model.get_decoder()(**batch.model_inputs(), use_cache=False).last_hidden_state
    positions = batch.labels != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[positions])
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _per_row_mean(values: torch.Tensor, row_of_position: torch.Tensor, n_rows: int) -> torch.Tensor:
    sums = values.new_zeros(n_rows).index_add(0, row_of_position, values)
    counts = values.new_zeros(n_rows).index_add(0, row_of_position, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def position_rows(batch: Batch) -> torch.Tensor:
    """Row index of every answer position (same order as :func:`answer_logits`)."""
    positions = batch.labels != IGNORE_INDEX
    return positions.nonzero()[:, 0]


def low_level_loss(
    logits: torch.Tensor,
    base_logp_unrel: torch.Tensor,
    scoring: ScoringBatch,
    factors: Sequence[Factors],
    mask: torch.Tensor,
    *,
    loc_coef: float,
    l2_coef: float,
) -> LossParts:
    """L_low from answer-position ``logits`` of the scoring rows under the masked update.

    ``base_logp_unrel`` are the log-probabilities at W_t on the unrel rows' answer positions
    (the KL targets); ``mask`` (L) weights each module's update in the L2 term.
    """
    batch, r = scoring.batch, scoring.n_records
    rows = position_rows(batch)
    labels = batch.labels[batch.labels != IGNORE_INDEX]
    logp = torch.log_softmax(logits, dim=-1)
    is_equiv = rows < r
    nll = -logp[is_equiv].gather(1, labels[is_equiv].unsqueeze(1)).squeeze(1)
    ce_rows = _per_row_mean(nll, rows[is_equiv], r)
    new_unrel = logp[~is_equiv]
    kl_pos = (base_logp_unrel.exp() * (base_logp_unrel - new_unrel)).sum(-1)
    kl_rows = _per_row_mean(kl_pos, rows[~is_equiv] - r, r)
    ce = (scoring.weights * ce_rows).sum()
    kl = (scoring.weights * kl_rows).sum()
    l2 = sum(m**2 * f.frob_sq() for m, f in zip(mask, factors, strict=True))
    return LossParts(ce + loc_coef * kl + l2_coef * l2, ce, kl, l2)


def reference_forward(
    model: nn.Module,
    modules: Sequence[nn.Linear],
    factors: Sequence[Factors],
    scoring: ScoringBatch,
    *,
    with_full: bool,
    prefix: PrefixCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad forward of the KL targets and, if ``with_full``, the scoring rows under mask 1.

    Returns the base log-probabilities at the unrel rows' answer positions and the logits of
    the scoring rows under the full update (or ``None``).
    """
    batch, r = scoring.batch, scoring.n_records
    unrel = slice(r, 2 * r)
    parts = [Batch(batch.input_ids[unrel], batch.attention_mask[unrel], batch.labels[unrel])]
    row_mask = [torch.zeros(r, device=batch.input_ids.device)]
    if with_full:
        parts.append(batch)
        row_mask.append(torch.ones(2 * r, device=batch.input_ids.device))
    combined = Batch(
        torch.cat([p.input_ids for p in parts]),
        torch.cat([p.attention_mask for p in parts]),
        torch.cat([p.labels for p in parts]),
    )
    per_row = torch.cat(row_mask)
    detached = [f.detached() for f in factors]
    with torch.no_grad(), side_path(modules, detached, [per_row] * len(modules)):
        logits = answer_logits(model, combined, prefix)
    n_base = int((parts[0].labels != IGNORE_INDEX).sum())
    base_logp = torch.log_softmax(logits[:n_base], dim=-1)
    return base_logp, (logits[n_base:] if with_full else None)
