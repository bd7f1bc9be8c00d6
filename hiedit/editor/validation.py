"""Validation of an editor during training: a held-out slice of the train split, a short edit
stream on it, and the early-stopping bookkeeping (best networks, patience).

The slice is disjoint by subject from the records the editor trains on and is the same for every
variant and seed of a dataset (it depends on the records only), so every fitted editor and every
comparator tuned on it is chosen on the same data, and never on the eval stream. A validation
runs the real sequential protocol (:func:`hiedit.evaluation.stream.run_stream`) from the base
weights with the networks as they are, then puts the networks back: whatever the stream changes
(the normalisers' statistics, the step counter) does not leak into training.

The score that is maximised is the harmonic mean of efficacy, generalisation and locality after
the whole validation stream (so retention counts: every edit is scored after the last one), in
the form of ROME/MEMIT's "Score". Locality is ``specificity_agreement_correct``: the share of the
unrelated answer positions the unedited model predicts correctly that it still predicts after the
stream (1 for doing nothing, lower for every known fact an edit breaks). ROME's Score takes the
gold specificity instead, which on CounterFact is a neighbourhood success rate near 0.8; on the
ZsRE-style data of a 135M model it is a token accuracy near 0.1, so the harmonic mean would be
that one noisy number (training then stopped at whichever validation happened to get a few more
unrelated tokens right). The harmonic mean rewards an editor only for raising all three: doing
nothing keeps locality but scores low efficacy, and breaking the model is caught by locality.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hiedit.data.records import EditRecord
from hiedit.validation_metrics import LOGGED_METRICS

log = logging.getLogger(__name__)

SCORE_METRICS = ("efficacy", "generalization", "specificity_agreement_correct")
# A validation row: its trajectory, its score and LOGGED_METRICS.
VALIDATION_COLUMNS = ("trajectory", "score", *LOGGED_METRICS)


def split_validation(
    records: Sequence[EditRecord], size: int
) -> tuple[list[EditRecord], list[EditRecord]]:
    """``(train, validation)``: whole subjects, drawn in a fixed order, go to validation until it
    holds ``size`` records (the last subject's extra records are dropped, never moved to train)."""
    if size <= 0:
        return list(records), []
    subjects = sorted({r.subject for r in records})
    random.Random("validation-slice").shuffle(subjects)
    chosen: set[str] = set()
    count = 0
    per_subject: dict[str, int] = {}
    for r in records:
        per_subject[r.subject] = per_subject.get(r.subject, 0) + 1
    for subject in subjects:
        if count >= size:
            break
        chosen.add(subject)
        count += per_subject[subject]
    validation = [r for r in records if r.subject in chosen][:size]
    train = [r for r in records if r.subject not in chosen]
    return train, validation


def validation_score(metrics: dict[str, float]) -> float:
    """The harmonic mean of :data:`SCORE_METRICS` (0 when any of them is 0).

    A metric that is undefined on the slice (absent or NaN: locality when the unedited model gets
    no unrelated answer position right, as on tiny random models) counts as 1: nothing measurable
    was broken, and the score is decided by the others."""
    values = [_defined_or_one(metrics.get(name)) for name in SCORE_METRICS]
    if min(values) <= 0.0:
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def _defined_or_one(value) -> float:
    value = float("nan") if value is None else float(value)
    return value if math.isfinite(value) else 1.0


class ValidationStream:
    """Runs the validation stream for an editor; the unedited model is scored once."""

    def __init__(self, editor, records: Sequence[EditRecord], n_edits: int, batch_size: int):
        from hiedit.evaluation.stream import StreamSettings

        self.editor = editor
        self.records = list(records)[:n_edits]
        self.settings = StreamSettings(
            n_edits=len(self.records),
            num_pre=max(1, len(self.records) // 4),
            n_curve_points=0,
            curve_sample=1,
            batch_size=batch_size,
            seed=0,
        )
        self.unedited = None

    def run(self) -> dict[str, float]:
        """Metrics of one validation stream with the editor's current networks."""
        from hiedit.evaluation.stream import run_stream

        editor = self.editor
        saved = editor.network_state()
        training = editor.nets.training
        step, rng = editor.step, editor.rng.get_state()
        editor.nets.eval()
        editor.reset_weights()
        try:
            result = run_stream(
                editor,
                editor.model,
                editor.tokenizer,
                self.records,
                self.settings,
                progress=False,
                unedited=self.unedited,
            )
        finally:
            editor.reset_weights()
            editor.load_network_state(saved)
            editor.nets.train(training)
            editor.step = step
            editor.rng.set_state(rng)
        self.unedited = result.unedited
        return dict(result.metrics)


@dataclass
class EarlyStopping:
    """Best validation score so far, the networks that reached it and the patience left."""

    patience: int  # validations without improvement before stopping (0: never stop early)
    best_score: float = float("-inf")
    best_trajectory: int = -1
    best_networks: dict[str, Any] | None = None
    since_best: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self, trajectory: int, metrics: dict[str, float], networks) -> bool:
        """Add one validation; returns whether training should stop."""
        score = validation_score(metrics)
        values = {"trajectory": trajectory, "score": score, **metrics}
        row = {name: values.get(name) for name in VALIDATION_COLUMNS}
        self.rows.append(row)
        if score > self.best_score:
            self.best_score, self.best_trajectory = score, trajectory
            self.best_networks = copy.deepcopy(networks)
            self.since_best = 0
        else:
            self.since_best += 1
        log.info(
            "validation after %d trajectories: score %.4f (best %.4f after %d)",
            trajectory,
            score,
            self.best_score,
            self.best_trajectory,
        )
        return self.patience > 0 and self.since_best >= self.patience

    def state(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "best_score": self.best_score,
            "best_trajectory": self.best_trajectory,
            "best_networks": self.best_networks,
            "since_best": self.since_best,
            "rows": self.rows,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
