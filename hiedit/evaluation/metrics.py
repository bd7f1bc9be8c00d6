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
forwards for 3 (ZsRE) or 6 (CounterFact) tuples per record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from hiedit.data.records import ROLES
from hiedit.data.tokenize import IGNORE_INDEX, encode_qa, encode_role, pad_token_id

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from hiedit.data.records import EditRecord

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
    with an old token and those where the label's logit beats it (zero without ``old_labels``);
    ``predictions``: the argmax tokens at each row's answer positions, in order.
    """

    n_answer: torch.Tensor
    n_correct: torch.Tensor
    log_prob: torch.Tensor
    n_aligned: torch.Tensor
    n_preferred: torch.Tensor
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
    gold_log_prob = gold_logit - picked.logsumexp(dim=-1)

    def per_row(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(batch_size, dtype=values.dtype, device=values.device)
        return out.index_add_(0, rows, values)

    ones = torch.ones_like(gold, dtype=torch.float64)
    n_aligned = torch.zeros(batch_size, dtype=torch.float64, device=labels.device)
    n_preferred = torch.zeros_like(n_aligned)
    if old_labels is not None:
        old = old_labels[mask]
        aligned = old != IGNORE_INDEX
        old_logit = picked.gather(1, old.clamp(min=0)[:, None])[:, 0]
        n_aligned = per_row(aligned.double())
        n_preferred = per_row((aligned & (gold_logit > old_logit)).double())
    counts = mask.sum(dim=1).tolist()
    return PositionStats(
        n_answer=per_row(ones),
        n_correct=per_row((argmax == gold).double()),
        log_prob=per_row(gold_log_prob.double()),
        n_aligned=n_aligned,
        n_preferred=n_preferred,
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
    """Teacher-forced rows of one pass kind, unpadded, with their owner (record, role, pass)."""

    input_ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    old_labels: list[torch.Tensor | None]
    owner: list[tuple[int, str, str]]


def _collect_rows(tokenizer, records: Sequence[EditRecord], max_length: int | None) -> _Rows:
    rows = _Rows([], [], [], [])

    def add(batch, old_labels, role: str, kind: str) -> None:
        lengths = batch.attention_mask.sum(dim=1).tolist()
        for i, length in enumerate(lengths):
            rows.input_ids.append(batch.input_ids[i, :length])
            rows.labels.append(batch.labels[i, :length])
            rows.old_labels.append(None if old_labels is None else old_labels[i, :length])
            rows.owner.append((i, role, kind))

    for role in ROLES:
        batch, old_labels = encode_role(tokenizer, records, role, max_length=max_length)
        add(batch, old_labels, role, "target")
        if old_labels is not None:
            qas = [rec.role(role) for rec in records]
            old_batch = encode_qa(
                tokenizer, [qa.prompt for qa in qas], [qa.old for qa in qas], max_length=max_length
            )
            add(old_batch, None, role, "old")
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


def score_records(
    model,
    tokenizer,
    records: Sequence[EditRecord],
    *,
    batch_size: int,
    reference: Sequence[Sequence[int]] | None = None,
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> Scores:
    """Score ``records`` with ``model`` as it is now (rules: module docstring).

    ``reference``: the unedited model's ``unrel`` predictions, aligned with ``records``; when
    given, the ``specificity_agreement`` column is filled. The model's train/eval mode is
    restored afterwards.
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

    rows = _collect_rows(tokenizer, records, max_length)
    # Longest first: similar lengths share a batch (little padding) and a memory problem shows
    # up in the first batch rather than the last.
    order = sorted(range(len(rows.input_ids)), key=lambda i: -len(rows.input_ids[i]))
    stats: dict[tuple[int, str, str], tuple[float, ...]] = {}
    unrel_predictions: list[list[int]] = [[] for _ in records]
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    was_training = model.training
    model.eval()
    n_forwards = 0
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
                chunk = order[start : start + batch_size]
                input_ids = _pad([rows.input_ids[i] for i in chunk], pad).to(device)
                labels = _pad([rows.labels[i] for i in chunk], IGNORE_INDEX).to(device)
                attention_mask = _pad([torch.ones_like(rows.input_ids[i]) for i in chunk], 0)
                olds = [rows.old_labels[i] for i in chunk]
                old_labels = None
                if any(o is not None for o in olds):
                    filled = [
                        o if o is not None else torch.full_like(rows.labels[i], IGNORE_INDEX)
                        for o, i in zip(olds, chunk, strict=True)
                    ]
                    old_labels = _pad(filled, IGNORE_INDEX).to(device)
                logits = model(
                    input_ids=input_ids, attention_mask=attention_mask.to(device), use_cache=False
                ).logits
                n_forwards += 1
                batch_stats = answer_position_stats(logits, labels, old_labels)
                values = (
                    torch.stack(
                        [
                            batch_stats.n_answer,
                            batch_stats.n_correct,
                            batch_stats.log_prob,
                            batch_stats.n_aligned,
                            batch_stats.n_preferred,
                        ],
                        dim=1,
                    )
                    .cpu()
                    .tolist()
                )
                for j, i in enumerate(chunk):
                    owner = rows.owner[i]
                    stats[owner] = tuple(values[j])
                    if owner[1] == "unrel" and owner[2] == "target":
                        unrel_predictions[owner[0]] = batch_stats.predictions[j]
    finally:
        model.train(was_training)

    table: dict[str, list[float]] = {name: [] for name in columns}
    for r in range(len(records)):
        for role, name in ROLE_METRICS.items():
            n_answer, n_correct, log_prob, n_aligned, n_preferred = stats[(r, role, "target")]
            if data_format == "counterfact":
                table[name].append(n_preferred / n_aligned)
                old_log_prob = stats[(r, role, "old")][2]
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
