"""Records too long for the model's context are refused, naming the record, before any editing."""

from __future__ import annotations

import dataclasses
import json

import pytest
from editor_helpers import tiny_job, toy_records

from hiedit.cli import main
from hiedit.data import QA, check_fits_model, check_token_lengths, write_split
from hiedit.errors import DataError
from hiedit.models.tiny import build_byte_tokenizer

# tiny_job's model has 128 positions; the byte tokenizer gives one token per byte plus BOS.
LONG_PROMPT = "Where is " + "a" * 150 + "?"


def _with_long_equiv(records, index):
    records = list(records)
    rec = records[index]
    records[index] = dataclasses.replace(rec, equiv=QA(LONG_PROMPT, rec.equiv.target))
    return records


def test_token_lengths_are_checked_per_role_and_name_the_record():
    tok = build_byte_tokenizer()
    records = _with_long_equiv(toy_records(6), 4)
    with pytest.raises(DataError) as err:
        check_token_lengths(tok, records, 128, source="train.parquet")
    answer = len(" " + records[4].equiv.target)
    assert str(err.value) == (
        f"train.parquet: record 4 (toy-4): its equiv tuple is {1 + len(LONG_PROMPT) + answer - 1} "
        f"tokens (prompt {1 + len(LONG_PROMPT)}, answer {answer}), more than the model's 128 "
        "positions"
    )
    check_token_lengths(tok, records, 1000, source="train.parquet")
    check_token_lengths(tok, records, None, source="train.parquet")  # no limit known


def test_the_limit_is_exact_and_chunks_do_not_hide_a_record():
    tok = build_byte_tokenizer()
    records = toy_records(5)
    # Row length is prompt (with BOS) + answer - 1: the last answer token is never an input.
    longest = max(
        1 + len(qa.prompt) + len(" " + qa.target) - 1
        for r in records
        for qa in (r.edit, r.equiv, r.unrel)
    )
    check_token_lengths(tok, records, longest, source="s", chunk=2)
    with pytest.raises(DataError, match=f"more than the model's {longest - 1} positions"):
        check_token_lengths(tok, records, longest - 1, source="s", chunk=2)


def test_check_fits_model_reads_the_context_from_the_model_config():
    from hiedit.models import load_model

    job = tiny_job()
    model, tok = load_model(job["model"])
    records = _with_long_equiv(toy_records(3), 2)
    with pytest.raises(DataError, match=r"s\.parquet: record 2 \(toy-2\): its equiv tuple"):
        check_fits_model(tok, records, model, "s.parquet")
    check_fits_model(tok, toy_records(3), model, "s.parquet")


def test_train_refuses_a_record_longer_than_the_context(tmp_path, capsys):
    config = tmp_path / "job.json"
    config.write_text(json.dumps(tiny_job()))
    train = write_split(_with_long_equiv(toy_records(8), 5), tmp_path / "train.parquet")
    out = tmp_path / "editor" / "editor.pt"
    argv = ["train", "--run-config", str(config), "--train-data", str(train), "--out", str(out)]
    assert main([*argv, "--no-progress", "--threads", "1"]) == 2
    assert f"error: {train}: record 5 (toy-5): its equiv tuple is" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("editor.pt.partial").exists()


def test_evaluate_refuses_a_record_longer_than_the_context(tmp_path, capsys):
    config = tmp_path / "job.json"
    config.write_text(json.dumps(tiny_job()))
    eval_ = write_split(_with_long_equiv(toy_records(6), 1), tmp_path / "eval.parquet")
    out_dir = tmp_path / "eval"
    argv = ["evaluate", "--run-config", str(config), "--eval-data", str(eval_), "--untrained"]
    assert main([*argv, "--out-dir", str(out_dir), "--no-progress", "--threads", "1"]) == 2
    assert f"error: {eval_}: record 1 (toy-1): its equiv tuple is" in capsys.readouterr().err
    assert not (out_dir / "metrics.json").exists()
    assert not (out_dir / "resume-state").exists()
