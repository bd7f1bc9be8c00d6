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
* **specificity_agreement**: the fraction of ``unrel`` answer positions where the model's argmax
  equals the unedited model's argmax (``reference`` predictions, taken once before editing).

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
PROB_SUFFIX = "_prob"


def metric_columns(data_format: str, *, agreement: bool = True) -> list[str]:
    """The per-record metric columns :func:`score_records` returns for ``data_format``."""
    columns = list(ROLE_METRICS.values())
    if agreement:
        columns.append(AGREEMENT)
    if data_format == "counterfact":
        columns += [name + PROB_SUFFIX for name in ROLE_METRICS.values()]
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


def answer_position_stats(
    logits: torch.Tensor, labels: torch.Tensor, old_labels: torch.Tensor | None = None
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
    return PositionStats(
        n_answer=per_row(ones),
        n_correct=per_row((argmax == gold).double()),
        log_prob=per_row(gold_log_prob.double()),
        n_aligned=n_aligned,
        n_preferred=n_preferred,
        old_log_prob=old_log_prob,
        predictions=[chunk.tolist() for chunk in argmax.split(counts)],
    )


@dataclass
class Scores:
    """Result of :func:`score_records`.

    ``frame``: one row per record (in the given order) with the metric columns of
    :func:`metric_columns`; ``predictions``: per record, the argmax tokens at the ``unrel`` answer
    positions (pass them as ``reference`` when scoring the edited model); ``n_forwards``: model
    calls made.
    """

    frame: pd.DataFrame
    predictions: list[list[int]]
    n_forwards: int


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
    reference: Sequence[Sequence[int]] | None = None,
    max_length: int | None = None,
    share_prefix: bool = True,
    progress: bool = False,
    desc: str = "scoring",
) -> Scores:
    """Score ``records`` with ``model`` as it is now (rules: module docstring).

    ``reference``: the unedited model's ``unrel`` predictions, aligned with ``records``; when
    given, the ``specificity_agreement`` column is filled. ``share_prefix=False`` runs the
    CounterFact old-answer pass for every tuple even where the target pass already holds its
    logits (for checking that shortcut). The model's train/eval mode is restored afterwards.
    """
    import pandas as pd
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if reference is not None and len(reference) != len(records):
        raise ValueError(f"{len(reference)} reference predictions for {len(records)} records")
    data_format = _record_format(records)
    columns = metric_columns(data_format, agreement=reference is not None)
    if not records:
        return Scores(pd.DataFrame(columns=columns, dtype=float), [], 0)

    rows = _collect_rows(tokenizer, records, max_length, share_prefix)
    # Longest first: similar lengths share a batch (little padding) and a memory problem shows
    # up in the first batch rather than the last.
    order = sorted(range(len(rows.input_ids)), key=lambda i: -len(rows.input_ids[i]))
    stats: dict[tuple[int, str, str], list[float]] = {}
    unrel_predictions: list[list[int]] = [[] for _ in records]
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
                olds = [rows.old_labels[i] for i in chunk]
                old_labels = None
                if any(o is not None for o in olds):
                    filled = [
                        o if o is not None else torch.full_like(rows.labels[i], IGNORE_INDEX)
                        for o, i in zip(olds, chunk, strict=True)
                    ]
                    old_labels = _pad(filled, IGNORE_INDEX).to(device)
                logits, labels, old_labels = _forward_answer_logits(
                    model,
                    _pad([rows.input_ids[i] for i in chunk], pad).to(device),
                    _pad([torch.ones_like(rows.input_ids[i]) for i in chunk], 0).to(device),
                    _pad([rows.labels[i] for i in chunk], IGNORE_INDEX).to(device),
                    old_labels,
                    sliced,
                )
                n_forwards += 1
                batch_stats = answer_position_stats(logits, labels, old_labels)
                values = torch.stack(
                    [
                        batch_stats.n_answer,
                        batch_stats.n_correct,
                        batch_stats.log_prob,
                        batch_stats.n_aligned,
                        batch_stats.n_preferred,
                        batch_stats.old_log_prob,
                    ],
                    dim=1,
                ).cpu()
                for j, i in enumerate(chunk):
                    owner = rows.owner[i]
                    stats[owner] = values[j].tolist()
                    if owner[1] == "unrel" and owner[2] == "target":
                        unrel_predictions[owner[0]] = batch_stats.predictions[j]
    finally:
        model.train(was_training)

    table: dict[str, list[float]] = {name: [] for name in columns}
    for r in range(len(records)):
        for role, name in ROLE_METRICS.items():
            n_answer, n_correct, log_prob, n_aligned, n_preferred, shared_old = stats[
                (r, role, "target")
            ]
            if data_format == "counterfact":
                table[name].append(n_preferred / n_aligned)
                own_pass = stats.get((r, role, "old"))
                old_log_prob = own_pass[2] if own_pass is not None else shared_old
                table[name + PROB_SUFFIX].append(float(log_prob > old_log_prob))
            else:
                table[name].append(n_correct / n_answer)
        if reference is not None:
            table[AGREEMENT].append(_agreement(unrel_predictions[r], reference[r], records[r]))
    return Scores(pd.DataFrame(table, columns=columns), unrel_predictions, n_forwards)


def _agreement(predicted: Sequence[int], reference: Sequence[int], record: EditRecord) -> float:
    if len(predicted) != len(reference):
        raise ValueError(
            f"record {record.record_id}: {len(reference)} reference predictions for "
            f"{len(predicted)} unrel answer positions (different tokenizer or max_length?)"
        )
    same = sum(int(a == b) for a, b in zip(predicted, reference, strict=True))
    return same / len(predicted)


def summarize(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> dict[str, float]:
    """Mean over records of each metric column (NaN-free: an empty frame gives no entries)."""
    names = list(columns) if columns is not None else list(frame.columns)
    if frame.empty:
        return {}
    return {name: float(frame[name].mean()) for name in names}


def prefixed(values: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``values`` with every key prefixed (``retention_``, ``unedited_``, ``curve_``)."""
    return {prefix + key: value for key, value in values.items()}
