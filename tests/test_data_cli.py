"""``hiedit data`` commands: exit codes, messages and the files they write."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from hiedit.cli import main
from hiedit.data import read_split
from hiedit.data.geofacts import RAW_FILES

FIXTURES = Path(__file__).parent / "fixtures"


def test_check_valid_file(capsys):
    assert (
        main(
            [
                "data",
                "check",
                "--format",
                "counterfact",
                str(FIXTURES / "counterfact_rome_sample.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3 records read, 3 valid, 0 malformed" in out
    assert "edit: 3 tuples (3 with an old answer)" in out
    assert "unrel: 3 tuples" in out


def test_check_malformed_file_exits_nonzero_with_location(tmp_path):
    records = json.loads((FIXTURES / "zsre_mend_sample.json").read_text())
    del records[2]["loc_ans"]
    bad = tmp_path / "zsre_bad.json"
    bad.write_text(json.dumps(records))
    proc = subprocess.run(
        [sys.executable, "-m", "hiedit", "data", "check", "--format", "zsre", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "malformed: zsre_bad.json: record 2: field 'loc_ans' is missing [missing]" in proc.stdout
    assert "error: " in proc.stderr and "zsre_bad.json: 1 of 3 records are malformed" in proc.stderr


def test_check_needs_format_for_json(capsys):
    assert main(["data", "check", str(FIXTURES / "zsre_mend_sample.json")]) == 2
    assert "--format is required" in capsys.readouterr().err


def test_geofacts_command_writes_raw_files_and_stats(tmp_path, capsys):
    out_dir = tmp_path / "geo"
    stats_path = tmp_path / "stats" / "geo.json"
    argv = [
        "data",
        "geofacts",
        "--out-dir",
        str(out_dir),
        "--seed",
        "0",
        "--n-eval",
        "60",
        "--max-per-relation",
        "100",
        "--stats",
        str(stats_path),
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(RAW_FILES.values())
    stats = json.loads(stats_path.read_text())
    assert stats["records"]["zsre"]["eval"] == 60
    printed = capsys.readouterr().out
    assert "zsre_eval: 60 records (capital" in printed
    assert (
        main(["data", "check", "--format", "counterfact", str(out_dir / "counterfact_eval.json")])
        == 0
    )


def test_prepare_from_two_files(tmp_path, capsys):
    train, eval_ = tmp_path / "train.parquet", tmp_path / "eval.parquet"
    argv = [
        "data",
        "prepare",
        "--format",
        "zsre",
        "--train-input",
        str(FIXTURES / "zsre_mend_sample.json"),
        "--eval-input",
        str(FIXTURES / "zsre_mend_sample.json"),
        "--seed",
        "0",
        "--n-eval",
        "1",
        "--out-train",
        str(train),
        "--out-eval",
        str(eval_),
    ]
    assert main(argv) == 0
    eval_records, train_records = read_split(eval_), read_split(train)
    assert [r.subject for r in eval_records] == ["Watts Humphrey"]
    # The same subject in the train file is removed so the splits stay disjoint.
    assert [r.subject for r in train_records] == ["Ramalinaceae", "Danielle Darrieux"]
    assert "removed 1 train records" in capsys.readouterr().out


def test_prepare_split_by_subject(tmp_path, capsys):
    raw = tmp_path / "counterfact.json"
    shutil.copy(FIXTURES / "counterfact_rome_sample.json", raw)
    train, eval_ = tmp_path / "t.parquet", tmp_path / "e.parquet"
    argv = [
        "data",
        "prepare",
        "--format",
        "counterfact",
        "--input",
        str(raw),
        "--split-by-subject",
        "--seed",
        "5",
        "--n-eval",
        "2",
        "--n-train",
        "10",
        "--out-train",
        str(train),
        "--out-eval",
        str(eval_),
    ]
    assert main(argv) == 0
    train_records, eval_records = read_split(train), read_split(eval_)
    assert len(eval_records) == 2 and len(train_records) == 1
    assert not {r.subject for r in train_records} & {r.subject for r in eval_records}
    assert "train: 1 records (fewer than the 10 asked for)" in capsys.readouterr().out
    # Same seed, same split and the same picked prompts.
    assert (
        main(
            [
                *argv[:-4],
                "--out-train",
                str(tmp_path / "t2.parquet"),
                "--out-eval",
                str(tmp_path / "e2.parquet"),
            ]
        )
        == 0
    )
    assert read_split(tmp_path / "e2.parquet") == eval_records


def test_prepare_rejects_inconsistent_flags(tmp_path, capsys):
    base = [
        "data",
        "prepare",
        "--format",
        "zsre",
        "--seed",
        "0",
        "--out-train",
        str(tmp_path / "t.parquet"),
        "--out-eval",
        str(tmp_path / "e.parquet"),
    ]
    assert main([*base, "--input", str(FIXTURES / "zsre_mend_sample.json"), "--n-eval", "1"]) == 2
    assert "--input needs --split-by-subject" in capsys.readouterr().err
    assert main([*base, "--train-input", str(FIXTURES / "zsre_mend_sample.json")]) == 2
    assert "--train-input and --eval-input" in capsys.readouterr().err
    assert not (tmp_path / "t.parquet").exists()


def test_download_command_file_url(tmp_path, capsys):
    out = tmp_path / "d" / "zsre.json"
    src = FIXTURES / "zsre_mend_sample.json"
    assert main(["data", "download", "--url", src.as_uri(), "--out", str(out)]) == 0
    assert out.read_bytes() == src.read_bytes()
    assert (
        main(["data", "download", "--url", (tmp_path / "missing.json").as_uri(), "--out", str(out)])
        == 2
    )
    assert "download failed: file://" in capsys.readouterr().err
    assert out.read_bytes() == src.read_bytes()
