"""Malformed records in real-format files: check reports all, prepare drops or fails by policy.

The fixtures hold the defects found in the public files: ZsRE (MEND) records with an empty
``alt``, an empty ``answers`` list or no ``loc_ans``; CounterFact (ROME) records whose
``paraphrase_prompts`` or ``neighborhood_prompts`` are empty. Every failure must name the file,
the record and the field, and leave no output a later run could take as complete.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from hiedit.cli import main
from hiedit.data import load_records, read_split
from hiedit.data.loading import parse_file
from hiedit.data.prepare import prepare_splits
from hiedit.data.raw import DEFAULT_MAX_CHARS, REASONS, RecordError
from hiedit.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
ZSRE_TRAIN = FIXTURES / "zsre_mend_train_defects.json"
ZSRE_EVAL = FIXTURES / "zsre_mend_eval_defects.json"
CF_ROME = FIXTURES / "counterfact_rome_defects.json"

# (record index, field, reason) of every defect in the fixtures.
ZSRE_TRAIN_DEFECTS = [(1, "alt", "empty"), (3, "answers", "empty_list"), (4, "loc_ans", "missing")]
ZSRE_EVAL_DEFECTS = [(2, "alt", "empty")]
CF_DEFECTS = [(2, "paraphrase_prompts", "empty_list"), (5, "neighborhood_prompts", "empty_list")]


def _reasons(**counts: int) -> dict[str, int]:
    return {reason: counts.get(reason, 0) for reason in REASONS}


def _check(path: Path, format: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hiedit", "data", "check", "--format", format, str(path), *extra],
        capture_output=True,
        text=True,
    )


def _prepare_argv(tmp_path: Path, *inputs: str, policy: str, fmt: str = "zsre") -> list[str]:
    return [
        "data",
        "prepare",
        "--format",
        fmt,
        *inputs,
        "--seed",
        "0",
        "--on-malformed",
        policy,
        "--out-train",
        str(tmp_path / "out" / "train.parquet"),
        "--out-eval",
        str(tmp_path / "out" / "eval.parquet"),
        "--stats",
        str(tmp_path / "out" / "stats.json"),
    ]


ZSRE_INPUTS = ("--train-input", str(ZSRE_TRAIN), "--eval-input", str(ZSRE_EVAL))
CF_INPUTS = ("--input", str(CF_ROME), "--split-by-subject", "--n-eval", "3")


def _outputs(tmp_path: Path) -> list[str]:
    folder = tmp_path / "out"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize(
    ("path", "fmt", "defects", "valid"),
    [
        (ZSRE_TRAIN, "zsre", ZSRE_TRAIN_DEFECTS, 4),
        (ZSRE_EVAL, "zsre", ZSRE_EVAL_DEFECTS, 3),
        (CF_ROME, "counterfact", CF_DEFECTS, 6),
    ],
    ids=["zsre-train", "zsre-eval", "counterfact-rome"],
)
def test_parse_collects_every_malformed_record_with_its_reason(path, fmt, defects, valid):
    parsed = parse_file(path, fmt, seed=0)
    assert [(e.index, e.field, e.reason) for e in parsed.malformed] == defects
    assert len(parsed.records) == valid and parsed.read == valid + len(defects)
    for err in parsed.malformed:
        assert isinstance(err, RecordError)
        assert str(err).startswith(f"{path.name}: record {err.index}: field '{err.field}'")


def test_check_reports_every_malformed_record_and_exits_nonzero():
    proc = _check(ZSRE_TRAIN, "zsre")
    assert proc.returncode == 2
    out = proc.stdout
    assert "malformed: zsre_mend_train_defects.json: record 1: field 'alt' is empty [empty]" in out
    assert (
        "malformed: zsre_mend_train_defects.json: record 3: field 'answers' is an empty list "
        "[empty_list]" in out
    )
    assert (
        "malformed: zsre_mend_train_defects.json: record 4: field 'loc_ans' is missing [missing]"
        in out
    )
    assert "7 records read, 4 valid, 3 malformed" in out
    assert "malformed per reason: missing 1, empty 1, empty_list 1" in out
    assert "malformed per field: alt empty 1; answers empty_list 1; loc_ans missing 1" in out
    assert "valid: 4 records" in out
    assert "3 of 7 records are malformed" in proc.stderr


def test_check_reports_counterfact_empty_prompt_lists():
    proc = _check(CF_ROME, "counterfact")
    assert proc.returncode == 2
    assert "record 2: field 'paraphrase_prompts' is an empty list [empty_list]" in proc.stdout
    assert "record 5: field 'neighborhood_prompts' is an empty list [empty_list]" in proc.stdout
    assert "8 records read, 6 valid, 2 malformed" in proc.stdout


def test_check_of_a_clean_file_exits_zero():
    proc = _check(FIXTURES / "counterfact_rome_sample.json", "counterfact")
    assert proc.returncode == 0, proc.stderr
    assert "3 records read, 3 valid, 0 malformed" in proc.stdout


def test_prepare_drop_writes_the_valid_records_and_stats(tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(_prepare_argv(tmp_path, *ZSRE_INPUTS, policy="drop")) == 0
    train = read_split(tmp_path / "out" / "train.parquet")
    eval_ = read_split(tmp_path / "out" / "eval.parquet")
    assert [r.record_id for r in eval_] == [
        "zsre_mend_eval_defects:0",
        "zsre_mend_eval_defects:1",
        "zsre_mend_eval_defects:3",
    ]
    # Carl Nielsen is in eval, so the train record is removed; the malformed eval record on
    # Kaldor does not count as an eval subject.
    assert [r.subject for r in train] == ["Kaldor", "Pieter Bruegel the Elder", "Opel Kadett"]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["on_malformed"] == "drop" and stats["max_chars"] == DEFAULT_MAX_CHARS
    assert stats["inputs"]["train"] == {
        "file": "zsre_mend_train_defects.json",
        "read": 7,
        "kept": 4,
        "dropped": 3,
        "dropped_per_reason": _reasons(empty=1, empty_list=1, missing=1),
        "dropped_per_field": {
            "alt": {"empty": 1},
            "answers": {"empty_list": 1},
            "loc_ans": {"missing": 1},
        },
    }
    assert stats["inputs"]["eval"]["dropped_per_reason"] == _reasons(empty=1)
    assert stats["splits"] == {
        "train": {"records": 3, "removed_shared_subject": 1, "beyond_n_train": 0},
        "eval": {"records": 3, "beyond_n_eval": 0},
    }
    # Every dropped record is in the log, and so is the summary per reason.
    assert "zsre_mend_train_defects.json: record 4: field 'loc_ans' is missing" in caplog.text
    assert "dropped 3 of 7 records as malformed (missing 1, empty 1, empty_list 1)" in caplog.text
    out = capsys.readouterr().out
    assert "zsre_mend_eval_defects.json: dropped 1 of 4 records as malformed (empty 1)" in out


def test_prepare_drop_counterfact_split_by_subject(tmp_path):
    assert main(_prepare_argv(tmp_path, *CF_INPUTS, policy="drop", fmt="counterfact")) == 0
    train = read_split(tmp_path / "out" / "train.parquet")
    eval_ = read_split(tmp_path / "out" / "eval.parquet")
    assert len(train) == 3 and len(eval_) == 3
    ids = {r.record_id for r in train + eval_}
    assert not ids & {"counterfact_rome_defects:2", "counterfact_rome_defects:5"}
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert list(stats["inputs"]) == ["all"]
    assert stats["inputs"]["all"]["dropped_per_reason"] == _reasons(empty_list=2)
    assert stats["inputs"]["all"]["dropped_per_field"] == {
        "neighborhood_prompts": {"empty_list": 1},
        "paraphrase_prompts": {"empty_list": 1},
    }


@pytest.mark.parametrize(
    ("inputs", "fmt", "first"),
    [
        (ZSRE_INPUTS, "zsre", "zsre_mend_train_defects.json: record 1: field 'alt' is empty"),
        (
            CF_INPUTS,
            "counterfact",
            "counterfact_rome_defects.json: record 2: field 'paraphrase_prompts' is an empty list",
        ),
    ],
    ids=["zsre", "counterfact"],
)
def test_prepare_fail_names_file_record_and_field_and_writes_nothing(
    tmp_path, capsys, inputs, fmt, first
):
    assert main(_prepare_argv(tmp_path, *inputs, policy="fail", fmt=fmt)) == 2
    err = capsys.readouterr().err
    assert f"error: {first}" in err
    assert "more malformed records; `hiedit data check` lists them all" in err
    assert _outputs(tmp_path) == []


def test_fail_is_the_default_policy(tmp_path):
    with pytest.raises(DataError, match="record 1: field 'alt' is empty"):
        load_records(ZSRE_TRAIN, "zsre", seed=0)
    with pytest.raises(DataError, match="record 1: field 'alt' is empty"):
        prepare_splits("zsre", seed=0, train_input=ZSRE_TRAIN, eval_input=ZSRE_EVAL)


def test_a_failed_write_leaves_no_output(tmp_path, monkeypatch, capsys):
    """The splits and stats appear together or not at all."""
    import hiedit.data.store as store

    calls = []

    def write_then_fail(records, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(records, path)

    real_write = store.write_split_to
    monkeypatch.setattr(store, "write_split_to", write_then_fail)
    assert main(_prepare_argv(tmp_path, *ZSRE_INPUTS, policy="drop")) == 2
    assert "No space left on device while writing into" in capsys.readouterr().err
    assert _outputs(tmp_path) == []


def test_unknown_policy_is_refused():
    with pytest.raises(DataError, match="unknown on_malformed 'skip'"):
        prepare_splits(
            "zsre", seed=0, train_input=ZSRE_TRAIN, eval_input=ZSRE_EVAL, on_malformed="skip"
        )


def test_stats_table_rows_per_dataset(tmp_path):
    zsre_dir, cf_dir = tmp_path / "zsre", tmp_path / "counterfact"
    assert main([*_prepare_argv(zsre_dir, *ZSRE_INPUTS, policy="drop"), "--dataset", "zsre"]) == 0
    assert main(_prepare_argv(cf_dir, *CF_INPUTS, policy="drop", fmt="counterfact")) == 0
    csv, html = tmp_path / "report" / "data.csv", tmp_path / "report" / "data.html"
    stats = [str(zsre_dir / "out" / "stats.json"), str(cf_dir / "out" / "stats.json")]
    assert main(["data", "stats-table", *stats, "--csv", str(csv), "--html", str(html)]) == 0
    import pandas as pd

    table = pd.read_csv(csv)
    # The name recorded with --dataset, else the stats file's folder.
    assert list(table["dataset"]) == ["zsre", "out"]
    assert list(table["read"]) == [11, 8] and list(table["kept"]) == [7, 6]
    assert list(table["dropped_empty"]) == [2, 0]
    assert list(table["dropped_empty_list"]) == [1, 2]
    assert list(table["dropped_missing"]) == [1, 0]
    assert list(table["removed_shared_subject"]) == [1, 0]
    assert list(table["train"]) == [3, 3] and list(table["eval"]) == [3, 3]
    assert {f"dropped_{r}" for r in REASONS} <= set(table.columns)
    page = html.read_text()
    assert "Data preparation" in page and "dropped_empty_list" in page
    assert "dropped_duplicate_id" not in page  # reasons that never occur are left out there


def test_stats_table_names_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "zsre" / "stats.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"format": "zsre"}))
    assert main(["data", "stats-table", str(bad), "--csv", str(tmp_path / "t.csv")]) == 2
    assert f"{bad}: not a data-preparation stats file (key 'inputs')" in (capsys.readouterr().err)
    assert not (tmp_path / "t.csv").exists()
