"""Bad raw inputs, both formats: empty files and splits, a byte-order mark, huge records, case ids.

Each case asserts that the message names the culprit (file, record, field) and that nothing is
left behind that a later run could take as a complete output.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from editor_helpers import tiny_job

from hiedit.cli import main
from hiedit.data import load_records, read_split, write_split
from hiedit.data.loading import parse_file
from hiedit.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
ZSRE = FIXTURES / "zsre_mend_sample.json"
CF_ROME = FIXTURES / "counterfact_rome_sample.json"
CF_EASY = FIXTURES / "counterfact_easyedit_sample.json"
FORMAT_OF = {ZSRE: "zsre", CF_ROME: "counterfact", CF_EASY: "counterfact"}


def _write(tmp_path: Path, name: str, records) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _records(source: Path) -> list:
    return json.loads(source.read_text(encoding="utf-8"))


def _prepare(tmp_path: Path, fmt: str, *inputs: str, policy: str = "fail") -> int:
    return main(
        [
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
    )


def _no_outputs(tmp_path: Path) -> bool:
    return not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- encodings and empty inputs ------------------------------------------------------------


@pytest.mark.parametrize("source", [ZSRE, CF_ROME, CF_EASY], ids=["zsre", "rome", "easyedit"])
def test_a_utf8_byte_order_mark_is_read(tmp_path, source):
    path = tmp_path / f"bom_{source.name}"
    path.write_bytes(b"\xef\xbb\xbf" + source.read_bytes())
    fmt = FORMAT_OF[source]
    assert load_records(path, fmt, seed=0) == [
        dataclasses.replace(r, record_id=r.record_id.replace(source.stem, path.stem))
        for r in load_records(source, fmt, seed=0)
    ]


def test_a_byte_order_mark_in_jsonl_is_read(tmp_path):
    path = tmp_path / "zsre.jsonl"
    lines = "\n".join(json.dumps(r) for r in _records(ZSRE))
    path.write_bytes(b"\xef\xbb\xbf" + lines.encode())
    assert len(load_records(path, "zsre", seed=0)) == 3


@pytest.mark.parametrize("fmt", ["zsre", "counterfact"])
def test_a_zero_byte_file_is_named(tmp_path, capsys, fmt):
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    assert main(["data", "check", "--format", fmt, str(path)]) == 2
    assert "empty.json: the file is empty (0 bytes)" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["zsre", "counterfact"])
def test_an_empty_list_is_an_error_at_check_and_prepare(tmp_path, capsys, fmt):
    empty = _write(tmp_path, "eval.json", [])
    assert main(["data", "check", "--format", fmt, str(empty)]) == 2
    assert f"{empty}: holds no records" in capsys.readouterr().err
    source = ZSRE if fmt == "zsre" else CF_ROME
    inputs = ("--train-input", str(source), "--eval-input", str(empty))
    assert _prepare(tmp_path, fmt, *inputs, policy="drop") == 2
    assert "eval.json: holds no records" in capsys.readouterr().err
    assert _no_outputs(tmp_path)


def test_a_file_with_nothing_valid_left_is_an_error_under_drop(tmp_path, capsys):
    records = _records(ZSRE)
    for r in records:
        r.pop("loc_ans")
    bad = _write(tmp_path, "all_bad.json", records)
    inputs = ("--train-input", str(ZSRE), "--eval-input", str(bad))
    assert _prepare(tmp_path, "zsre", *inputs, policy="drop") == 2
    assert "all_bad.json: no valid records left: all 3 are malformed (missing 3)" in (
        capsys.readouterr().err
    )
    assert _no_outputs(tmp_path)


def test_an_empty_train_split_is_an_error_naming_the_file(tmp_path, capsys):
    # Every train subject is in eval: nothing is left to train on.
    inputs = ("--train-input", str(ZSRE), "--eval-input", str(ZSRE))
    assert _prepare(tmp_path, "zsre", *inputs) == 2
    assert (
        "zsre_mend_sample.json: the train split would hold no records: all 3 of its records "
        "share a subject with the eval split"
    ) in capsys.readouterr().err
    assert _no_outputs(tmp_path)
    split = ("--input", str(CF_ROME), "--split-by-subject")
    assert _prepare(tmp_path, "counterfact", *split, "--n-eval", "10") == 2
    assert "counterfact_rome_sample.json: the train split would hold no records: every record" in (
        capsys.readouterr().err
    )
    assert _no_outputs(tmp_path)


def test_train_evaluate_and_check_refuse_an_empty_split_naming_it(tmp_path, capsys):
    empty = write_split([], tmp_path / "zsre" / "eval.parquet")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(tiny_job()))
    out = tmp_path / "editor" / "editor.pt"
    argv = ["train", "--run-config", str(job), "--train-data", str(empty), "--out", str(out)]
    assert main(argv) == 2
    assert f"error: {empty}: the split holds no records" in capsys.readouterr().err
    assert not out.parent.exists()
    out_dir = tmp_path / "eval"
    argv = ["evaluate", "--run-config", str(job), "--eval-data", str(empty), "--untrained"]
    assert main([*argv, "--out-dir", str(out_dir)]) == 2
    assert f"error: {empty}: the split holds no records" in capsys.readouterr().err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    assert main(["data", "check", str(empty)]) == 2
    assert f"{empty}: the split holds no records" in capsys.readouterr().err


# --- length limit --------------------------------------------------------------------------


def _huge_zsre(tmp_path: Path) -> Path:
    records = _records(ZSRE)
    records[1]["src"] = "What is " + "very " * 2_000_000 + "long?"  # about 10 MB
    return _write(tmp_path, "huge.json", records)


def test_a_huge_prompt_is_malformed_at_check(tmp_path, capsys):
    path = _huge_zsre(tmp_path)
    assert main(["data", "check", "--format", "zsre", str(path)]) == 2
    out = capsys.readouterr().out
    assert (
        "huge.json: record 1: field 'src' is 10,000,013 characters long, over the limit of 2,000 "
        "[too_long]"
    ) in out
    assert "malformed per reason: too_long 1" in out
    # The limit is a named option; 0 lifts it.
    assert main(["data", "check", "--format", "zsre", "--max-chars", "0", str(path)]) == 0


def test_a_huge_prompt_is_dropped_or_fails_at_prepare(tmp_path, capsys):
    path = _huge_zsre(tmp_path)
    eval_ = _write(tmp_path, "eval.json", [_records(ZSRE)[0]])
    inputs = ("--train-input", str(path), "--eval-input", str(eval_))
    assert _prepare(tmp_path, "zsre", *inputs) == 2
    assert "error: huge.json: record 1: field 'src' is 10,000,013 characters long" in (
        capsys.readouterr().err
    )
    assert _no_outputs(tmp_path)
    assert _prepare(tmp_path, "zsre", *inputs, policy="drop") == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["inputs"]["train"]["dropped_per_reason"]["too_long"] == 1
    assert stats["inputs"]["train"]["dropped_per_field"] == {"src": {"too_long": 1}}
    # Record 0 shares its subject with eval; record 1 is the huge one.
    assert [r.subject for r in read_split(tmp_path / "out" / "train.parquet")] == [
        "Danielle Darrieux"
    ]


def test_the_limit_covers_list_items_and_both_formats(tmp_path):
    records = _records(CF_ROME)
    records[0]["neighborhood_prompts"].append("x" * 2001)
    records[2]["requested_rewrite"]["target_new"]["str"] = "y" * 2001
    parsed = parse_file(_write(tmp_path, "cf_long.json", records), "counterfact", seed=0)
    assert [(e.index, e.field, e.reason) for e in parsed.malformed] == [
        (0, "neighborhood_prompts[4]", "too_long"),
        (2, "requested_rewrite.target_new.str", "too_long"),
    ]
    assert parsed.per_field() == {
        "neighborhood_prompts": {"too_long": 1},
        "requested_rewrite.target_new.str": {"too_long": 1},
    }
    assert len(parse_file(tmp_path / "cf_long.json", "counterfact", 0, max_chars=None).records) == 3


# --- CounterFact case ids ------------------------------------------------------------------


def test_a_repeated_rome_case_id_names_both_records(tmp_path):
    records = _records(CF_ROME)
    records[2]["case_id"] = 0
    path = _write(tmp_path, "cf_dup.json", records)
    with pytest.raises(DataError) as err:
        load_records(path, "counterfact", seed=0)
    assert str(err.value) == (
        "cf_dup.json: record 2: field 'case_id' is 0, the same as record 0's "
        "(case ids must be unique)"
    )
    parsed = parse_file(path, "counterfact", seed=0)
    assert [(e.index, e.reason) for e in parsed.malformed] == [(2, "duplicate_id")]
    assert [r.record_id for r in parsed.records] == ["cf_dup:0", "cf_dup:1"]


@pytest.mark.parametrize(
    ("case_id", "kind"), [("7", "str"), (3.0, "float"), (True, "bool"), (None, "NoneType")]
)
def test_a_rome_case_id_must_be_an_integer(tmp_path, case_id, kind):
    records = _records(CF_ROME)
    records[1]["case_id"] = case_id
    path = _write(tmp_path, "cf_id.json", records)
    parsed = parse_file(path, "counterfact", seed=0)
    assert [(e.index, e.field, e.reason) for e in parsed.malformed] == [
        (1, "case_id", "wrong_type")
    ]
    assert str(parsed.malformed[0]) == (
        f"cf_id.json: record 1: field 'case_id' is a {kind}, expected an integer"
    )


def test_easyedit_case_ids_may_be_strings(tmp_path):
    records = _records(CF_EASY)
    records[0]["case_id"] = "a-0"
    records[1]["case_id"] = "a-1"
    ids = [r.record_id for r in load_records(_write(tmp_path, "e.json", records), "counterfact", 0)]
    assert ids == ["e:a-0", "e:a-1"]


def test_a_broken_first_record_does_not_decide_the_flavour(tmp_path):
    records = ["oops", *_records(CF_ROME)]
    parsed = parse_file(_write(tmp_path, "cf_first.json", records), "counterfact", seed=0)
    assert [(e.index, e.reason) for e in parsed.malformed] == [(0, "wrong_type")]
    assert len(parsed.records) == 3
