"""Splitting by subject and the size bounds of the prepared splits."""

from __future__ import annotations

from hiedit.data import QA, EditRecord
from hiedit.data.prepare import split_by_subject


def _records(subjects):
    qa = QA("p", "t")
    return [EditRecord(f"r{i}", s, "rel", "zsre", qa, qa, qa) for i, s in enumerate(subjects)]


SUBJECTS = ["a", "b", "a", "c", "d", "b", "e", "f", "g", "a"]


def test_split_by_subject_is_disjoint_sized_and_ordered():
    records = _records(SUBJECTS)
    train, eval_ = split_by_subject(records, n_eval=4, seed=0)
    assert len(eval_) == 4
    assert not {r.subject for r in train} & {r.subject for r in eval_}
    order = {r.record_id: i for i, r in enumerate(records)}
    for part in (train, eval_):
        assert [order[r.record_id] for r in part] == sorted(order[r.record_id] for r in part)
    # Nothing is duplicated; only records of the last eval subject past n_eval may be dropped.
    assert len(train) + len(eval_) <= len(records)
    assert {r.record_id for r in train}.isdisjoint(r.record_id for r in eval_)


def test_split_by_subject_depends_on_seed_only():
    records = _records(SUBJECTS)
    assert split_by_subject(records, 3, seed=1) == split_by_subject(records, 3, seed=1)
    splits = {
        tuple(r.record_id for r in split_by_subject(records, 3, seed=s)[1]) for s in range(10)
    }
    assert len(splits) > 1


def test_asking_for_more_than_available_puts_all_in_eval(caplog):
    records = _records(["a", "b"])
    train, eval_ = split_by_subject(records, 5, seed=0)
    assert train == [] and len(eval_) == 2
    assert "fewer than n_eval=5" in caplog.text
