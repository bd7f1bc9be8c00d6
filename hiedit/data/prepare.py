"""Turning raw dataset files into the tidy train/eval split pair (subject-disjoint, seeded, sized)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hiedit.data.loading import load_records
from hiedit.data.records import EditRecord
from hiedit.data.store import write_split
from hiedit.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """The two splits and what was removed to keep them subject-disjoint."""

    train: list[EditRecord]
    eval: list[EditRecord]
    dropped_shared_subject: int  # train records removed because their subject is in eval


def split_by_subject(
    records: Sequence[EditRecord], n_eval: int, seed: int
) -> tuple[list[EditRecord], list[EditRecord]]:
    """(train, eval): subjects in a seeded random order go to eval until it holds ``n_eval`` records.

    Both keep file order. A subject is never on both sides; records of the last eval subject
    beyond ``n_eval`` are dropped rather than moved to train. Asking for more than there is puts
    everything in eval (with a warning).
    """
    subjects = sorted({r.subject for r in records})
    random.Random(f"split-by-subject:{seed}").shuffle(subjects)
    per_subject: dict[str, int] = {}
    for r in records:
        per_subject[r.subject] = per_subject.get(r.subject, 0) + 1
    eval_subjects, count = set(), 0
    for subject in subjects:
        if count >= n_eval:
            break
        eval_subjects.add(subject)
        count += per_subject[subject]
    eval_records = [r for r in records if r.subject in eval_subjects][:n_eval]
    if len(eval_records) < n_eval:
        log.warning(
            "%d records in all, fewer than n_eval=%d: every record goes to eval",
            len(records),
            n_eval,
        )
    train_records = [r for r in records if r.subject not in eval_subjects]
    return train_records, eval_records


def prepare_splits(
    format: str,
    *,
    seed: int,
    input: str | os.PathLike[str] | None = None,
    train_input: str | os.PathLike[str] | None = None,
    eval_input: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    n_eval: int | None = None,
    drop_malformed: bool = False,
) -> Prepared:
    """Read raw files with the real readers and build subject-disjoint train/eval splits.

    Either one ``input`` split by subject (``n_eval`` required), or a ``train_input`` and an
    ``eval_input`` used as given. ``n_train`` and ``n_eval`` are upper bounds applied in file
    order (a file with fewer records is used whole, with a warning: the paper's 20,000-edit
    stream is longer than some eval files). Train records whose subject is in the eval split are
    removed (and counted) so the two never share a subject.
    """
    if input is not None:
        if train_input is not None or eval_input is not None:
            raise DataError("give either one input (split by subject) or train and eval inputs")
        if n_eval is None:
            raise DataError("splitting one file by subject needs n_eval")
        records = load_records(input, format, seed, drop_malformed=drop_malformed)
        train, eval_ = split_by_subject(records, n_eval, seed)
    else:
        if train_input is None or eval_input is None:
            raise DataError("give both a train input and an eval input (or one input to split)")
        train = load_records(train_input, format, seed, drop_malformed=drop_malformed)
        eval_ = load_records(eval_input, format, seed, drop_malformed=drop_malformed)
        if n_eval is not None:
            if len(eval_) < n_eval:
                log.warning(
                    "%s: %d records, fewer than n_eval=%d",
                    Path(eval_input).name,
                    len(eval_),
                    n_eval,
                )
            eval_ = eval_[:n_eval]
    eval_subjects = {r.subject for r in eval_}
    kept = [r for r in train if r.subject not in eval_subjects]
    dropped = len(train) - len(kept)
    if dropped:
        log.info("removed %d train records whose subject is in the eval split", dropped)
    if n_train is not None:
        if len(kept) < n_train:
            log.warning("%d train records, fewer than n_train=%d", len(kept), n_train)
        kept = kept[:n_train]
    return Prepared(train=kept, eval=eval_, dropped_shared_subject=dropped)


def write_prepared(
    prepared: Prepared, out_train: str | os.PathLike[str], out_eval: str | os.PathLike[str]
) -> None:
    """Write both splits (each atomically)."""
    write_split(prepared.train, out_train)
    write_split(prepared.eval, out_eval)
