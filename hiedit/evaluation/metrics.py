"""Batched teacher-forced scoring of edit records: ZsRE token accuracy and the CounterFact rules.

Per record and role (``edit`` → efficacy, ``equiv`` → generalization, ``unrel`` → specificity):

* **ZsRE**: top-1 token accuracy on the answer positions (fraction of answer tokens whose argmax
  equals the gold token), per record; a summary is the mean over records.
* **CounterFact, logit rule** (the reference's): at each answer position where the new and the old
  answer both have a token (``encode_qa_pair``'s alignment, teacher-forced on the target), success
  is ``logit(target token) > logit(old token)`` (strict, so an identical token counts as a
  failure); the record's value is the fraction of aligned positions that succeed. For ``unrel``
  the target is the true object and the old answer the new one, so success means "still prefers
  the truth".
* **CounterFact, probability rule** (``*_prob``): ``log P(target) > log P(old)`` with each full
  answer scored in its own teacher-forced pass (sum of token log-probabilities), 1.0 or 0.0.
* **CounterFact, per-token probability rule** (``*_prob_per_token``, ROME/MEMIT's): the same
  comparison of the mean token log-probability of each answer (the summed one divided by its
  length), so a longer answer is not penalised for its length.
* Against the unedited model (``reference``: its :class:`UnrelReference`, taken once before
  editing), on the ``unrel`` answer positions:
  **specificity_agreement**, the fraction of positions whose argmax equals the unedited argmax;
  **specificity_agreement_correct**, the same over only the positions the unedited model gets
  right (undefined, and left out of the mean, for a record with none: near-ties among wrong
  tokens do not count); **specificity_kl**, the mean over positions of
  KL(p_unedited ‖ p_edited) over the unedited model's top-``TOP_K`` tokens plus one bucket for the
  rest of the vocabulary (a lower bound of the full KL by the log-sum inequality, exactly 0 when
  nothing changed; storing whole distributions would cost the vocabulary size per position).

All tuples of all roles (and the CounterFact ``old`` passes) are pooled, sorted by length and run
in batches of ``batch_size`` under ``torch.inference_mode``: ``ceil(n_tuples / batch_size)``
forwards for 3 (ZsRE) or at most 6 (CounterFact) tuples per record. A CounterFact ``old`` pass
is skipped where the target pass already computed the same contexts (``old[:-1]`` a prefix of the
target's tokens, e.g. any one-token old answer), and Hugging Face models run their LM head only
on the span of answer positions (``logits_to_keep``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from hiedit.data.records import ROLES
from hiedit.data.tokenize import (
    IGNORE_INDEX,
    answer_text,
    encode_qa,
    encode_role,
    pad_token_id,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from hiedit.data.records import QA, EditRecord

log = logging.getLogger(__name__)

ROLE_METRICS = {"edit": "efficacy", "equiv": "generalization", "unrel": "specificity"}
AGREEMENT = "specificity_agreement"
AGREEMENT_CORRECT = "specificity_agreement_correct"
KL = "specificity_kl"
# Columns that exist only against a reference (the unedited model compared with itself is trivial).
REFERENCE_COLUMNS = (AGREEMENT, AGREEMENT_CORRECT, KL)
PROB_SUFFIX = "_prob"
PER_TOKEN_SUFFIX = "_prob_per_token"
TOP_K = 100  # unedited tokens kept per unrel position for specificity_kl


def metric_columns(data_format: str, *, agreement: bool = True) -> list[str]:
    """The per-record metric columns :func:`score_records` returns for ``data_format``."""
    columns = list(ROLE_METRICS.values())
    if agreement:
        columns += list(REFERENCE_COLUMNS)
    if data_format == "counterfact":
        columns += [name + PROB_SUFFIX for name in ROLE_METRICS.values()]
        columns += [name + PER_TOKEN_SUFFIX for name in ROLE_METRICS.values()]
    return columns


@dataclass
class PositionStats:
    """Per-row reductions over the answer positions of one teacher-forced batch.

    ``n_answer``/``n_correct``: answer positions and those whose argmax is the label;
    ``log_prob``: sum of the labels' log-probabilities; ``n_aligned``/``n_preferred``: positions
    with an old token and those where the label's logit beats it; ``old_log_prob``: sum of the
    old tokens' log-probabilities at those positions (the last three are zero without
    ``old_labels``); ``predictions``: the argmax tokens at each row's answer positions, in order.
    """

    n_answer: torch.Tensor
    n_correct: torch.Tensor
    log_prob: torch.Tensor
    n_aligned: torch.Tensor
    n_preferred: torch.Tensor
    old_log_prob: torch.Tensor
    predictions: list[list[int]]
    gold: list[list[int]] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)  # per row, P × V (if kept)


def answer_position_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    old_labels: torch.Tensor | None = None,
    *,
    keep_log_probs: bool = False,
) -> PositionStats:
    """Reduce ``logits`` (B × T × V) at the answer positions of pre-shifted ``labels`` (B × T).

    Only the answer positions are gathered and promoted to fp32 (log-softmax included), so the
    cost is proportional to the answer tokens rather than to B × T × V.
    """
    import torch

    mask = labels != IGNORE_INDEX
    rows = mask.nonzero()[:, 0]
    batch_size = labels.shape[0]
    picked = logits[mask].float()  # N × V
    gold = labels[mask]
    argmax = picked.argmax(dim=-1)
    gold_logit = picked.gather(1, gold[:, None])[:, 0]
    log_normalizer = picked.logsumexp(dim=-1)
    gold_log_prob = gold_logit - log_normalizer

    def per_row(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(batch_size, dtype=values.dtype, device=values.device)
        return out.index_add_(0, rows, values)

    ones = torch.ones_like(gold, dtype=torch.float64)
    n_aligned = torch.zeros(batch_size, dtype=torch.float64, device=labels.device)
    n_preferred = torch.zeros_like(n_aligned)
    old_log_prob = torch.zeros_like(n_aligned)
    if old_labels is not None:
        old = old_labels[mask]
        aligned = old != IGNORE_INDEX
        old_logit = picked.gather(1, old.clamp(min=0)[:, None])[:, 0]
        n_aligned = per_row(aligned.double())
        n_preferred = per_row((aligned & (gold_logit > old_logit)).double())
        old_log_prob = per_row(torch.where(aligned, old_logit - log_normalizer, 0.0).double())
    counts = mask.sum(dim=1).tolist()
    log_probs = []
    if keep_log_probs:
        log_probs = list((picked - log_normalizer[:, None]).split(counts))
    return PositionStats(
        n_answer=per_row(ones),
        n_correct=per_row((argmax == gold).double()),
        log_prob=per_row(gold_log_prob.double()),
        n_aligned=n_aligned,
        n_preferred=n_preferred,
        old_log_prob=old_log_prob,
        predictions=[chunk.tolist() for chunk in argmax.split(counts)],
        gold=[chunk.tolist() for chunk in gold.split(counts)],
        log_probs=log_probs,
    )


@dataclass
class UnrelReference:
    """The unedited model's view of each record's ``unrel`` answer positions (from
    :attr:`Scores.reference`): its argmax, whether that is the gold token, and its top-``TOP_K``
    token ids and log-probabilities (``P × TOP_K`` per record)."""

    predictions: list[list[int]]
    correct: list[list[bool]]
    top_ids: list[torch.Tensor]
    top_log_probs: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.predictions)

    def subset(self, indices: Sequence[int]) -> UnrelReference:
        return UnrelReference(
            [self.predictions[i] for i in indices],
            [self.correct[i] for i in indices],
            [self.top_ids[i] for i in indices],
            [self.top_log_probs[i] for i in indices],
        )

    def to_state(self) -> dict[str, list]:
        """Plain containers (a progress file is loaded with ``weights_only=True``)."""
        return {
            "predictions": self.predictions,
            "correct": self.correct,
            "top_ids": self.top_ids,
            "top_log_probs": self.top_log_probs,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, list]) -> UnrelReference:
        return cls(
            list(state["predictions"]),
            list(state["correct"]),
            list(state["top_ids"]),
            list(state["top_log_probs"]),
        )


@dataclass
class Scores:
    """Result of :func:`score_records`.

    ``frame``: one row per record (in the given order) with the metric columns of
    :func:`metric_columns`; ``reference``: this model's :class:`UnrelReference` (pass it as
    ``reference`` when scoring the edited model); ``n_forwards``: model calls made.
    """

    frame: pd.DataFrame
    reference: UnrelReference
    n_forwards: int

    @property
    def predictions(self) -> list[list[int]]:
        """The argmax tokens at each record's ``unrel`` answer positions."""
        return self.reference.predictions


@dataclass
class _Rows:
    """Teacher-forced rows, unpadded, each with its owner (record index, role, pass kind)."""

    input_ids: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    old_labels: list[torch.Tensor | None] = field(default_factory=list)
    owner: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, batch, old_labels, owners: Sequence[tuple[int, str, str]]) -> None:
        lengths = batch.attention_mask.sum(dim=1).tolist()
        for i, (length, owner) in enumerate(zip(lengths, owners, strict=True)):
            self.input_ids.append(batch.input_ids[i, :length])
            self.labels.append(batch.labels[i, :length])
            self.old_labels.append(None if old_labels is None else old_labels[i, :length])
            self.owner.append(owner)


def _old_pass_needed(tokenizer, qas: Sequence[QA]) -> list[bool]:
    """Whether P(old) needs its own pass, or can be read off the target pass.

    The old answer's j-th token is predicted from ``prompt + old[:j]``; when ``old[:-1]`` is a
    prefix of the target's tokens (a one-token old answer always is), the target pass has those
    exact contexts at the same positions, so a second forward would recompute the same logits.
    """

    def token_ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    targets = token_ids([answer_text(qa.target) for qa in qas])
    olds = token_ids([answer_text(qa.old) for qa in qas])
    return [
        not (len(old) <= len(new) and old[:-1] == new[: len(old) - 1])
        for new, old in zip(targets, olds, strict=True)
    ]


def _collect_rows(
    tokenizer, records: Sequence[EditRecord], max_length: int | None, share_prefix: bool
) -> _Rows:
    rows = _Rows()
    for role in ROLES:
        batch, old_labels = encode_role(tokenizer, records, role, max_length=max_length)
        rows.add(batch, old_labels, [(i, role, "target") for i in range(len(records))])
        if old_labels is None:
            continue
        qas = [rec.role(role) for rec in records]
        needed = _old_pass_needed(tokenizer, qas) if share_prefix else [True] * len(qas)
        chosen = [i for i, need in enumerate(needed) if need]
        if chosen:
            old_batch = encode_qa(
                tokenizer,
                [qas[i].prompt for i in chosen],
                [qas[i].old for i in chosen],
                max_length=max_length,
            )
            rows.add(old_batch, None, [(i, role, "old") for i in chosen])
    return rows


def _pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _record_format(records: Sequence[EditRecord]) -> str:
    formats = {rec.format for rec in records}
    if len(formats) > 1:
        raise ValueError(f"records mix formats {sorted(formats)}; score one dataset at a time")
    return formats.pop() if formats else "zsre"


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward_answer_logits(model, input_ids, attention_mask, labels, old_labels, sliced: bool):
    """Logits and the label tensors cut to the span of answer positions of the batch.

    With ``sliced`` (Hugging Face's ``logits_to_keep``) the LM head runs on that span only: the
    vocabulary projection is a large share of a small model's forward.
    """
    import torch

    if not sliced:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits, labels, old_labels
    columns = (labels != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    first, last = int(columns[0]), int(columns[-1]) + 1
    keep = torch.arange(first, last, device=input_ids.device)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep
    ).logits
    old = None if old_labels is None else old_labels[:, first:last]
    return logits, labels[:, first:last], old


def score_records(
    model,
    tokenizer,
    records: Sequence[EditRecord],
    *,
    batch_size: int,
    reference: UnrelReference | Sequence[Sequence[int]] | None = None,
    max_length: int | None = None,
    share_prefix: bool = True,
    progress: bool = False,
    desc: str = "scoring",
) -> Scores:
    """Score ``records`` with ``model`` as it is now (rules: module docstring).

    ``reference``: the unedited model's :class:`UnrelReference`, aligned with ``records``; when
    given, the reference columns are filled (a plain list of argmax predictions fills only
    ``specificity_agreement``). ``share_prefix=False`` runs the CounterFact old-answer pass for
    every tuple even where the target pass already holds its logits (for checking that shortcut).
    The model's train/eval mode is restored afterwards.
    """
    import pandas as pd

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if reference is not None and len(reference) != len(records):
        raise ValueError(f"{len(reference)} reference predictions for {len(records)} records")
    data_format = _record_format(records)
    columns = metric_columns(data_format, agreement=reference is not None)
    if reference is not None and not isinstance(reference, UnrelReference):
        columns = [c for c in columns if c not in (AGREEMENT_CORRECT, KL)]
    if not records:
        empty = UnrelReference([], [], [], [])
        return Scores(pd.DataFrame(columns=columns, dtype=float), empty, 0)
    rows = _collect_rows(tokenizer, records, max_length, share_prefix)
    full = reference if isinstance(reference, UnrelReference) else None
    batches = _run_batches(model, tokenizer, rows, len(records), batch_size, full, progress, desc)
    stats, unrel, n_forwards = batches
    table: dict[str, list[float]] = {name: [] for name in columns}
    for r in range(len(records)):
        _record_values(table, stats, r, data_format)
        if reference is not None:
            _reference_values(table, unrel[r], reference, r, records[r])
    return Scores(pd.DataFrame(table, columns=columns), _reference_of(unrel), n_forwards)


@dataclass
class _UnrelRow:
    """The model at one record's ``unrel`` answer positions (the full distributions are reduced
    in the batch: a vocabulary-sized row per position would not fit a long stream)."""

    predictions: list[int]
    gold: list[int]
    top_ids: torch.Tensor  # P × TOP_K, this model's most likely tokens
    top_log_probs: torch.Tensor  # P × TOP_K
    at_reference: torch.Tensor | None  # P × TOP_K, log-probabilities at the reference's top ids


def _unrel_row(batch: PositionStats, j: int, reference: UnrelReference | None, r: int) -> _UnrelRow:
    import torch

    log_probs = batch.log_probs[j]
    top = log_probs.topk(min(TOP_K, log_probs.shape[-1]), dim=-1)
    at_reference = None
    if reference is not None and reference.top_ids[r].shape[0] == log_probs.shape[0]:
        index = reference.top_ids[r].to(device=log_probs.device, dtype=torch.long)
        at_reference = log_probs.gather(1, index).float().cpu()
    return _UnrelRow(
        batch.predictions[j],
        batch.gold[j],
        top.indices.to(torch.int32).cpu(),
        top.values.float().cpu(),
        at_reference,
    )


def _run_batches(model, tokenizer, rows: _Rows, n_records, batch_size, reference, progress, desc):
    """Forward every row in length-sorted batches; per-owner statistics and the unrel rows."""
    import torch

    # Longest first: similar lengths share a batch (little padding) and a memory problem shows
    # up in the first batch rather than the last.
    order = sorted(range(len(rows.input_ids)), key=lambda i: -len(rows.input_ids[i]))
    stats: dict[tuple[int, str, str], list[float]] = {}
    unrel: list[_UnrelRow | None] = [None] * n_records
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    sliced = _accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    n_forwards = 0
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
                chunk = order[start : start + batch_size]
                logits, labels, old_labels = _forward_chunk(model, rows, chunk, pad, device, sliced)
                n_forwards += 1
                keep = any(rows.owner[i][1:] == UNREL_TARGET for i in chunk)
                batch = answer_position_stats(logits, labels, old_labels, keep_log_probs=keep)
                values = torch.stack(
                    [
                        batch.n_answer,
                        batch.n_correct,
                        batch.log_prob,
                        batch.n_aligned,
                        batch.n_preferred,
                        batch.old_log_prob,
                    ],
                    dim=1,
                ).cpu()
                for j, i in enumerate(chunk):
                    owner = rows.owner[i]
                    stats[owner] = values[j].tolist()
                    if owner[1:] == UNREL_TARGET:
                        unrel[owner[0]] = _unrel_row(batch, j, reference, owner[0])
    finally:
        model.train(was_training)
    return stats, unrel, n_forwards


UNREL_TARGET = ("unrel", "target")


def _forward_chunk(model, rows: _Rows, chunk: Sequence[int], pad: int, device, sliced: bool):
    import torch

    olds = [rows.old_labels[i] for i in chunk]
    old_labels = None
    if any(o is not None for o in olds):
        filled = [
            o if o is not None else torch.full_like(rows.labels[i], IGNORE_INDEX)
            for o, i in zip(olds, chunk, strict=True)
        ]
        old_labels = _pad(filled, IGNORE_INDEX).to(device)
    return _forward_answer_logits(
        model,
        _pad([rows.input_ids[i] for i in chunk], pad).to(device),
        _pad([torch.ones_like(rows.input_ids[i]) for i in chunk], 0).to(device),
        _pad([rows.labels[i] for i in chunk], IGNORE_INDEX).to(device),
        old_labels,
        sliced,
    )


def _record_values(table, stats, r: int, data_format: str) -> None:
    """Efficacy, generalisation, specificity (and the CounterFact probability rules) of record r."""
    for role, name in ROLE_METRICS.items():
        n_answer, n_correct, log_prob, n_aligned, n_preferred, shared = stats[(r, role, "target")]
        if data_format != "counterfact":
            table[name].append(n_correct / n_answer)
            continue
        table[name].append(n_preferred / n_aligned)
        own = stats.get((r, role, "old"))
        # The old answer's own pass, or (when its contexts are the target's) its aligned positions.
        old_log_prob, old_length = (own[2], own[0]) if own else (shared, n_aligned)
        table[name + PROB_SUFFIX].append(float(log_prob > old_log_prob))
        per_token = log_prob / n_answer > old_log_prob / old_length
        table[name + PER_TOKEN_SUFFIX].append(float(per_token))


def _reference_values(table, row: _UnrelRow, reference, r: int, record: EditRecord) -> None:
    full = isinstance(reference, UnrelReference)
    predictions = reference.predictions[r] if full else reference[r]
    if len(row.predictions) != len(predictions):
        raise ValueError(
            f"record {record.record_id}: {len(predictions)} reference predictions for "
            f"{len(row.predictions)} unrel answer positions (different tokenizer or max_length?)"
        )
    same = [int(a == b) for a, b in zip(row.predictions, predictions, strict=True)]
    table[AGREEMENT].append(sum(same) / len(same))
    if not full:
        return
    kept = [s for s, ok in zip(same, reference.correct[r], strict=True) if ok]
    table[AGREEMENT_CORRECT].append(sum(kept) / len(kept) if kept else float("nan"))
    table[KL].append(coarse_kl(reference.top_log_probs[r], row.at_reference))


def coarse_kl(p_top_log_probs, q_log_probs_there) -> float:
    """Mean over positions of KL(p ‖ q) over p's top tokens plus one bucket for the rest.

    ``p_top_log_probs`` (P × k): p's log-probabilities of its k most likely tokens;
    ``q_log_probs_there`` (P × k): q's log-probabilities of the same tokens. Exactly 0 when q
    equals p.
    """
    import torch

    p_top = p_top_log_probs.double()
    q_top = q_log_probs_there.double()
    ceiling = 1.0 - 1e-12
    p_rest = torch.log1p(-p_top.exp().sum(1).clamp(max=ceiling))
    q_rest = torch.log1p(-q_top.exp().sum(1).clamp(max=ceiling))
    kl = (p_top.exp() * (p_top - q_top)).sum(1) + p_rest.exp() * (p_rest - q_rest)
    return float(kl.clamp_min(0.0).mean())


def _reference_of(unrel: Sequence[_UnrelRow]) -> UnrelReference:
    return UnrelReference(
        predictions=[row.predictions for row in unrel],
        correct=[[a == g for a, g in zip(row.predictions, row.gold, strict=True)] for row in unrel],
        top_ids=[row.top_ids for row in unrel],
        top_log_probs=[row.top_log_probs for row in unrel],
    )


def summarize(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> dict[str, float]:
    """Mean over records of each metric column, skipping undefined values (a column with none
    defined, or an empty frame, gives no entry)."""
    names = list(columns) if columns is not None else list(frame.columns)
    if frame.empty:
        return {}
    means = {name: float(frame[name].mean()) for name in names}
    return {name: value for name, value in means.items() if value == value}


def prefixed(values: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``values`` with every key prefixed (``retention_``, ``unedited_``, ``curve_``)."""
    return {prefix + key: value for key, value in values.items()}
