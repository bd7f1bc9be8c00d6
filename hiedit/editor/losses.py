"""The low-level loss L_low (docs/method.md §5) evaluated through the side path, and its pieces.

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
from typing import Protocol

import torch
from torch import nn

from hiedit.data.records import EditRecord
from hiedit.data.tokenize import IGNORE_INDEX, Batch, encode_qa
from hiedit.editor.lowlevel import Factors
from hiedit.editor.packing import Packing, supports_packing
from hiedit.editor.prefix import PrefixCache, decoder_output
from hiedit.editor.sidepath import side_path
from hiedit.models.head import output_logits


@dataclass
class ScoringBatch:
    """Backtracked tuples: rows ``[0, R)`` are equiv tuples, rows ``[R, 2R)`` unrel tuples."""

    batch: Batch
    weights: torch.Tensor  # (R,) time-decay weight μ^j of each record
    n_records: int
    record_ids: list[str]

    def unrel_counts(self) -> list[int]:
        """Answer positions of each unrel row (rows ``[R, 2R)``), in record order."""
        labels = self.batch.labels[self.n_records :]
        return (labels != IGNORE_INDEX).sum(1).tolist()

    def chunks(self, max_records: int) -> list[ScoringBatch]:
        """Consecutive pieces of at most ``max_records`` records (0: the whole batch).

        Each piece holds the equiv and unrel rows of its records, so L_low's CE and KL sums are
        the sums over the pieces.
        """
        r = self.n_records
        if max_records <= 0 or max_records >= r:
            return [self]
        pieces = []
        for start in range(0, r, max_records):
            records = list(range(start, min(r, start + max_records)))
            pieces.append(
                ScoringBatch(
                    self.batch.rows(records + [r + i for i in records]),
                    self.weights[start : start + len(records)],
                    len(records),
                    self.record_ids[start : start + len(records)],
                )
            )
        return pieces


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
    return ScoringBatch(
        batch, torch.tensor(weights, device=device), len(records), [r.record_id for r in records]
    )


def answer_logits(
    model: nn.Module,
    batch: Batch,
    prefix: PrefixCache | None = None,
    packing: Packing | None = None,
) -> torch.Tensor:
    """Logits (P × V) at the answer positions of ``batch`` (row-major order), in fp32.

    They are the model's own logits at those positions (:func:`~hiedit.models.head.output_logits`:
    the head and, for Gemma-2, its soft-capping). With ``prefix``, the unedited lower layers come
    from its cache; with ``packing`` (:class:`~hiedit.editor.packing.Packing` of ``batch``) the
    decoder runs on the packed rows, without the padding.
    """
    if prefix is not None:
        hidden = prefix.last_hidden_state(batch, packing)
    else:
        hidden = decoder_output(model.get_decoder(), batch, packing)
    if packing is None:
        answers = hidden[batch.labels != IGNORE_INDEX]
    else:
        answers = packing.answers(hidden, batch)
    logits = output_logits(model, answers)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def packing_for(model: nn.Module, batch: Batch, pack_tokens: int) -> Packing | None:
    """The packing of ``batch`` into rows of ``pack_tokens`` positions (None: run it padded).

    ``pack_tokens`` 0 turns packing off; so does a decoder that cannot attend within packed
    sequences (:func:`~hiedit.editor.packing.supports_packing`).
    """
    if pack_tokens <= 0 or not supports_packing(model):
        return None
    return Packing.of(batch, pack_tokens)


def _per_row_mean(values: torch.Tensor, row_of_position: torch.Tensor, n_rows: int) -> torch.Tensor:
    sums = values.new_zeros(n_rows).index_add(0, row_of_position, values)
    counts = values.new_zeros(n_rows).index_add(0, row_of_position, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def position_rows(batch: Batch) -> torch.Tensor:
    """Row index of every answer position (same order as :func:`answer_logits`)."""
    positions = batch.labels != IGNORE_INDEX
    return positions.nonzero()[:, 0]


def prediction_loss(
    logits: torch.Tensor, base_logp_unrel: torch.Tensor, scoring: ScoringBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """The time-decayed CE on the equiv rows and KL on the unrel rows of ``scoring``.

    ``logits`` are the answer-position logits of the scoring rows under the masked update;
    ``base_logp_unrel`` the log-probabilities at W_t on the unrel rows' answer positions (the
    KL targets).
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
    return (scoring.weights * ce_rows).sum(), (scoring.weights * kl_rows).sum()


def l2_penalty(factors: Sequence[Factors], mask: torch.Tensor) -> torch.Tensor:
    """``Σ_l ‖ω_l Δ_l‖²_F`` in the Gram form (never a dense Δ)."""
    return sum(m**2 * f.frob_sq() for m, f in zip(mask, factors, strict=True))


class LossWeights(Protocol):
    """The two coefficients of L_low (``training.loc_coef``, ``training.l2_coef``)."""

    loc_coef: float
    l2_coef: float


def weighted_loss(ce, kl, l2, weights: LossWeights):
    """The one definition of how L_low weighs its terms: ``CE + λ_loc·KL + η_reg·L2``.

    Each term may be a tensor or a plain 0 (the trainer back-propagates the terms separately).
    """
    return ce + weights.loc_coef * kl + weights.l2_coef * l2


def low_level_loss(
    logits: torch.Tensor,
    base_logp_unrel: torch.Tensor,
    scoring: ScoringBatch,
    factors: Sequence[Factors],
    mask: torch.Tensor,
    weights: LossWeights,
) -> LossParts:
    """L_low from answer-position ``logits`` of the scoring rows under the masked update.

    ``base_logp_unrel`` are the log-probabilities at W_t on the unrel rows' answer positions
    (the KL targets); ``mask`` (L) weights each module's update in the L2 term.
    """
    ce, kl = prediction_loss(logits, base_logp_unrel, scoring)
    l2 = l2_penalty(factors, mask)
    return LossParts(weighted_loss(ce, kl, l2, weights), ce, kl, l2)


def unrel_log_probs(logits: torch.Tensor, scoring: ScoringBatch) -> list[torch.Tensor]:
    """Detached log-probabilities at each unrel row's answer positions, one tensor per record."""
    rows = position_rows(scoring.batch)
    logp = torch.log_softmax(logits.detach()[rows >= scoring.n_records], dim=-1)
    return list(torch.split(logp, scoring.unrel_counts()))


def reference_forward(
    model: nn.Module,
    modules: Sequence[nn.Linear],
    factors: Sequence[Factors],
    scoring: ScoringBatch,
    *,
    with_full: bool,
    base_records: Sequence[int] | None = None,
    prefix: PrefixCache | None = None,
    pack_tokens: int = 0,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """No-grad forward of the KL targets and, if ``with_full``, the scoring rows under mask 1.

    ``base_records`` (default all) are the records whose KL targets are computed here (the
    caller may hold the others from the previous step, see :class:`~hiedit.editor.trainer.Trainer`).
    ``pack_tokens`` > 0 runs the forward on packed sequences (:func:`packing_for`).
    Returns their base log-probabilities at the unrel answer positions (one tensor per record, in
    ``base_records`` order) and the logits of the scoring rows under the full update (or ``None``).
    """
    batch, r = scoring.batch, scoring.n_records
    wanted = list(range(r)) if base_records is None else list(base_records)
    parts: list[Batch] = []
    row_mask: list[torch.Tensor] = []
    device = batch.input_ids.device
    if wanted:
        index = torch.tensor([r + i for i in wanted], device=device)
        parts.append(
            Batch(batch.input_ids[index], batch.attention_mask[index], batch.labels[index])
        )
        row_mask.append(torch.zeros(len(wanted), device=device))
    if with_full:
        parts.append(batch)
        row_mask.append(torch.ones(2 * r, device=device))
    if not parts:
        return [], None
    combined = Batch(
        torch.cat([p.input_ids for p in parts]),
        torch.cat([p.attention_mask for p in parts]),
        torch.cat([p.labels for p in parts]),
    )
    per_row = torch.cat(row_mask)
    packing = packing_for(model, combined, pack_tokens)
    mask = per_row if packing is None else packing.per_position(per_row)
    detached = [f.detached() for f in factors]
    with torch.no_grad(), side_path(modules, detached, [mask] * len(modules)):
        logits = answer_logits(model, combined, prefix, packing)
    base: list[torch.Tensor] = []
    n_base = 0
    if wanted:
        counts = (parts[0].labels != IGNORE_INDEX).sum(1).tolist()
        n_base = sum(counts)
        base = list(torch.split(torch.log_softmax(logits[:n_base], dim=-1), counts))
    return base, (logits[n_base:] if with_full else None)
