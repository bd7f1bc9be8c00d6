"""Turning raw dataset files into the tidy train/eval split pair (subject-disjoint, seeded, sized)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiedit.atomic import atomic_path
from hiedit.data.loading import parse_file
from hiedit.data.raw import DEFAULT_MAX_CHARS, ON_MALFORMED, Parsed, apply_policy
from hiedit.data.records import EditRecord
from hiedit.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """The two splits, what was read to build them, and what was left out on the way."""

    train: list[EditRecord]
    eval: list[EditRecord]
    dropped_shared_subject: int  # train records removed because their subject is in eval
    # What each raw file held: keys "train" and "eval", or "all" for one file split by subject.
    inputs: dict[str, Parsed[EditRecord]] = field(default_factory=dict)
    beyond_n_train: int = 0  # valid, subject-disjoint train records past the n_train bound
    beyond_n_eval: int = 0  # valid records past the n_eval bound (in neither split)
    settings: dict[str, Any] = field(default_factory=dict)  # format, seed, policy, limits

    def stats(self) -> dict[str, Any]:
        """What ``stats.json`` holds: the settings, per input file the records read, kept and
        dropped per reason (and per field), and per split the records written and left out."""
        return {
            **self.settings,
            "inputs": {
                name: {
                    "file": parsed.file,
                    "read": parsed.read,
                    "kept": len(parsed.records),
                    "dropped": len(parsed.malformed),
                    "dropped_per_reason": parsed.per_reason(),
                    "dropped_per_field": parsed.per_field(),
                }
                for name, parsed in self.inputs.items()
            },
            "splits": {
                "train": {
                    "records": len(self.train),
                    "removed_shared_subject": self.dropped_shared_subject,
                    "beyond_n_train": self.beyond_n_train,
                },
                "eval": {"records": len(self.eval), "beyond_n_eval": self.beyond_n_eval},
            },
        }


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
    on_malformed: str = "fail",
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> Prepared:
    """Read raw files with the real readers and build subject-disjoint train/eval splits.

    Either one ``input`` split by subject (``n_eval`` required), or a ``train_input`` and an
    ``eval_input`` used as given. ``n_train`` and ``n_eval`` are upper bounds applied in file
    order (a file with fewer records is used whole, with a warning: the paper's 20,000-edit
    stream is longer than some eval files). Train records whose subject is in the eval split are
    removed (and counted) so the two never share a subject. Malformed records (strings over
    ``max_chars`` included) fail or are dropped per ``on_malformed`` (``"fail"``/``"drop"``);
    an empty file, or a split left with no records, is an error naming the file.
    """
    if on_malformed not in ON_MALFORMED:
        raise DataError(f"unknown on_malformed {on_malformed!r}; expected one of {ON_MALFORMED}")
    settings = {
        "format": format,
        "seed": seed,
        "on_malformed": on_malformed,
        "max_chars": max_chars,
        "n_train": n_train,
        "n_eval": n_eval,
    }
    beyond_n_eval = 0
    if input is not None:
        if train_input is not None or eval_input is not None:
            raise DataError("give either one input (split by subject) or train and eval inputs")
        if n_eval is None:
            raise DataError("splitting one file by subject needs n_eval")
        inputs = {"all": parse_file(input, format, seed, max_chars=max_chars)}
        records = apply_policy(inputs["all"], on_malformed)
        train, eval_ = split_by_subject(records, n_eval, seed)
        beyond_n_eval = len(records) - len(train) - len(eval_)
        train_source = eval_source = Path(input).name
    else:
        if train_input is None or eval_input is None:
            raise DataError("give both a train input and an eval input (or one input to split)")
        inputs = {
            "train": parse_file(train_input, format, seed, max_chars=max_chars),
            "eval": parse_file(eval_input, format, seed, max_chars=max_chars),
        }
        train = apply_policy(inputs["train"], on_malformed)
        eval_ = apply_policy(inputs["eval"], on_malformed)
        if n_eval is not None:
            if len(eval_) < n_eval:
                log.warning(
                    "%s: %d records, fewer than n_eval=%d",
                    Path(eval_input).name,
                    len(eval_),
                    n_eval,
                )
            beyond_n_eval = max(0, len(eval_) - n_eval)
            eval_ = eval_[:n_eval]
        train_source, eval_source = Path(train_input).name, Path(eval_input).name
    if not eval_:
        raise DataError(f"{eval_source}: the eval split would hold no records (n_eval={n_eval})")
    eval_subjects = {r.subject for r in eval_}
    kept = [r for r in train if r.subject not in eval_subjects]
    dropped = len(train) - len(kept)
    if dropped:
        log.info("removed %d train records whose subject is in the eval split", dropped)
    if not kept:
        why = (
            f"all {len(train)} of its records share a subject with the eval split"
            if train
            else f"every record went to the eval split (n_eval={n_eval})"
        )
        raise DataError(f"{train_source}: the train split would hold no records: {why}")
    beyond_n_train = 0
    if n_train is not None:
        if len(kept) < n_train:
            log.warning("%d train records, fewer than n_train=%d", len(kept), n_train)
        beyond_n_train = max(0, len(kept) - n_train)
        kept = kept[:n_train]
        if not kept:
            raise DataError(f"{train_source}: the train split would hold no records (n_train=0)")
    return Prepared(
        train=kept,
        eval=eval_,
        dropped_shared_subject=dropped,
        inputs=inputs,
        beyond_n_train=beyond_n_train,
        beyond_n_eval=beyond_n_eval,
        settings=settings,
    )


def write_prepared(
    prepared: Prepared,
    out_train: str | os.PathLike[str],
    out_eval: str | os.PathLike[str],
    stats: str | os.PathLike[str] | None = None,
) -> None:
    """Write both splits and, if given, ``stats.json``: all or nothing (every file is written to a
    temporary name first and renamed only once all are complete)."""
    import json
    from contextlib import ExitStack

    from hiedit.data.store import write_split_to

    outputs = [Path(out_train), Path(out_eval)] + ([Path(stats)] if stats is not None else [])
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise DataError(f"output paths must differ: {', '.join(map(str, outputs))}")
    with ExitStack() as stack:
        # Entered in reverse so the renames run train, eval, then stats.json.
        tmp = {p: stack.enter_context(atomic_path(p)) for p in reversed(outputs)}
        write_split_to(prepared.train, tmp[outputs[0]])
        write_split_to(prepared.eval, tmp[outputs[1]])
        if stats is not None:
            text = json.dumps(prepared.stats(), indent=1, ensure_ascii=False) + "\n"
            tmp[outputs[2]].write_text(text, encoding="utf-8")


def stats_table(paths: Sequence[str | os.PathLike[str]]):
    """One row per ``stats.json`` (written by ``write_prepared``): dataset, settings, records read,
    kept and dropped (in all and per reason: ``dropped_<reason>``, every reason a column),
    removed for sharing a subject with eval, and the records of each split. Errors name the
    file and the key."""
    import json

    import pandas as pd

    from hiedit.data.raw import REASONS

    rows = []
    for path in map(Path, paths):
        try:
            stats = json.loads(path.read_text(encoding="utf-8"))
            inputs = stats["inputs"].values()
            row = {
                "dataset": stats.get("dataset") or path.parent.name,
                "format": stats["format"],
                "on_malformed": stats["on_malformed"],
                "max_chars": stats["max_chars"],
                "files": ", ".join(i["file"] for i in inputs),
                "read": sum(i["read"] for i in inputs),
                "kept": sum(i["kept"] for i in inputs),
                "dropped": sum(i["dropped"] for i in inputs),
            }
            for reason in REASONS:
                row[f"dropped_{reason}"] = sum(i["dropped_per_reason"][reason] for i in inputs)
            splits = stats["splits"]
            row["removed_shared_subject"] = splits["train"]["removed_shared_subject"]
            row["train"] = splits["train"]["records"]
            row["eval"] = splits["eval"]["records"]
        except FileNotFoundError as err:
            raise DataError(f"{path}: stats file not found") from err
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from err
        except (KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{path}: not a data-preparation stats file (key {err})") from err
        rows.append(row)
    return pd.DataFrame(rows)
