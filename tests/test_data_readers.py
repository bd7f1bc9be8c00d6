"""Readers for ZsRE (MEND format) and CounterFact (ROME and EasyEdit formats), valid and malformed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hiedit.data import QA, load_records
from hiedit.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
ZSRE = FIXTURES / "zsre_mend_sample.json"
CF_ROME = FIXTURES / "counterfact_rome_sample.json"
CF_EASY = FIXTURES / "counterfact_easyedit_sample.json"


def _rewrite(tmp_path, source: Path, name: str, mutate) -> Path:
    """Copy a fixture with ``mutate(records)`` applied, under a recognisable file name."""
    records = json.loads(source.read_text())
    mutate(records)
    out = tmp_path / name
    out.write_text(json.dumps(records))
    return out


def test_zsre_roles():
    records = load_records(ZSRE, "zsre", seed=0)
    assert len(records) == 3
    first = records[0]
    assert first.record_id == "zsre_mend_sample:0"
    assert first.subject == "Watts Humphrey"
    assert first.format == "zsre"
    assert first.edit == QA("What university did Watts Humphrey attend?", "University of Michigan")
    assert first.equiv == QA(
        "What university did Watts Humphrey take part in?", "University of Michigan"
    )
    # loc keeps its "nq question: " prefix and gets a question mark.
    assert first.unrel == QA(
        "nq question: who played desmond doss father in hacksaw ridge?", "Hugo Weaving"
    )
    assert records[2].edit.target == "English"  # "ans" accepted in place of "alt"


def test_counterfact_rome_roles_and_seeded_choice():
    records = load_records(CF_ROME, "counterfact", seed=0)
    assert [r.record_id for r in records] == [
        "counterfact_rome_sample:0",
        "counterfact_rome_sample:1",
        "counterfact_rome_sample:2",
    ]
    raw = json.loads(CF_ROME.read_text())
    rec, src = records[0], raw[0]
    assert rec.relation == "P103"
    assert rec.edit == QA("The mother tongue of Danielle Darrieux is", "English", "French")
    assert rec.equiv.prompt in src["paraphrase_prompts"]
    assert (rec.equiv.target, rec.equiv.old) == ("English", "French")
    assert rec.unrel.prompt in src["neighborhood_prompts"]
    assert (rec.unrel.target, rec.unrel.old) == ("French", "English")
    # Same seed, same picks; over seeds, several distinct picks.
    assert load_records(CF_ROME, "counterfact", seed=0) == records
    picks = {load_records(CF_ROME, "counterfact", seed=s)[0].unrel.prompt for s in range(20)}
    assert len(picks) > 1


def test_counterfact_easyedit_strings_and_lists():
    records = load_records(CF_EASY, "counterfact", seed=3)
    a, b = records
    assert a.record_id == "counterfact_easyedit_sample:0"
    assert a.edit == QA("The mother tongue of Danielle Darrieux is", "English", "French")
    assert a.equiv == QA(
        "Where Danielle Darrieux is from, people speak the language of", "English", "French"
    )
    assert a.unrel == QA("Michel Rocard is a native speaker of", "French", "English")
    assert b.edit.old == "Toyota"  # ground_truth given as a one-item list
    assert b.equiv.prompt in ("Toyota Camry is produced by", "Toyota Camry is made by")
    assert b.unrel.prompt in ("Toyota Corolla, created by", "Lexus LS is a product of")
    assert (b.unrel.target, b.unrel.old) == ("Toyota", "Apple")


ZSRE_BAD = [
    ("missing_alt", lambda r: [r[1].pop("alt")], 1, "field 'alt' is missing"),
    ("empty_alt", lambda r: r[0].update(alt="  "), 0, "field 'alt' is empty"),
    ("loc_not_str", lambda r: r[2].update(loc=7), 2, "field 'loc' is a int, expected a string"),
    ("no_rephrase", lambda r: [r[0].pop("rephrase")], 0, "field 'rephrase' is missing"),
    ("answers_wrong", lambda r: r[1].update(answers={"a": 1}), 1, "field 'answers' is a dict"),
]


@pytest.mark.parametrize(
    ("name", "mutate", "index", "message"), ZSRE_BAD, ids=[c[0] for c in ZSRE_BAD]
)
def test_zsre_malformed(tmp_path, name, mutate, index, message):
    path = _rewrite(tmp_path, ZSRE, f"zsre_{name}.json", mutate)
    with pytest.raises(DataError) as err:
        load_records(path, "zsre", seed=0)
    assert str(err.value).startswith(f"zsre_{name}.json: record {index}: ")
    assert message in str(err.value)


CF_BAD = [
    (
        "no_slot",
        lambda r: r[1]["requested_rewrite"].update(prompt="The maker is"),
        1,
        "field 'requested_rewrite.prompt' has no '{}' slot",
    ),
    (
        "empty_new",
        lambda r: r[0]["requested_rewrite"]["target_new"].update(str=""),
        0,
        "field 'requested_rewrite.target_new.str' is empty",
    ),
    (
        "no_true",
        lambda r: r[2]["requested_rewrite"].pop("target_true"),
        2,
        "field 'requested_rewrite.target_true' is missing",
    ),
    (
        "no_paraphrases",
        lambda r: r[1].update(paraphrase_prompts=[]),
        1,
        "field 'paraphrase_prompts' is an empty list",
    ),
    (
        "bad_neighbour",
        lambda r: r[0]["neighborhood_prompts"].append(None),
        0,
        "field 'neighborhood_prompts[4]' is a NoneType",
    ),
    ("not_object", lambda r: r.append("oops"), 3, "is a str, expected an object"),
]


@pytest.mark.parametrize(("name", "mutate", "index", "message"), CF_BAD, ids=[c[0] for c in CF_BAD])
def test_counterfact_rome_malformed(tmp_path, name, mutate, index, message):
    path = _rewrite(tmp_path, CF_ROME, f"cf_{name}.json", mutate)
    with pytest.raises(DataError) as err:
        load_records(path, "counterfact", seed=0)
    assert str(err.value).startswith(f"cf_{name}.json: record {index}: ")
    assert message in str(err.value)


EASY_BAD = [
    ("no_truth", lambda r: r[1].pop("ground_truth"), 1, "field 'ground_truth' is missing"),
    (
        "loc_mismatch",
        lambda r: r[1].update(locality_ground_truth=["a", "b", "c"]),
        1,
        "field 'locality_ground_truth' has 3 items for 2 locality prompts",
    ),
    (
        "target_dict",
        lambda r: r[0].update(target_new={"str": "x"}),
        0,
        "field 'target_new' is a dict",
    ),
]


@pytest.mark.parametrize(
    ("name", "mutate", "index", "message"), EASY_BAD, ids=[c[0] for c in EASY_BAD]
)
def test_counterfact_easyedit_malformed(tmp_path, name, mutate, index, message):
    path = _rewrite(tmp_path, CF_EASY, f"easy_{name}.json", mutate)
    with pytest.raises(DataError) as err:
        load_records(path, "counterfact", seed=0)
    assert str(err.value).startswith(f"easy_{name}.json: record {index}: ")
    assert message in str(err.value)


def test_not_a_list_and_not_json(tmp_path):
    obj = tmp_path / "obj.json"
    obj.write_text('{"subject": "x"}')
    with pytest.raises(DataError, match="obj.json: expected a JSON list of records, got dict"):
        load_records(obj, "zsre", seed=0)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        load_records(broken, "counterfact", seed=0)


def test_wrong_format_for_file(tmp_path):
    with pytest.raises(DataError, match="record 0: not a CounterFact record"):
        load_records(ZSRE, "counterfact", seed=0)
    with pytest.raises(DataError, match=r"record 0: field 'alt' is missing \(also tried ans\)"):
        load_records(CF_EASY, "zsre", seed=0)
    with pytest.raises(DataError, match="unknown data format"):
        load_records(ZSRE, "wikidata", seed=0)


def test_drop_malformed_is_explicit_and_logged(tmp_path, caplog):
    path = _rewrite(tmp_path, ZSRE, "zsre_drop.json", lambda r: r[1].pop("alt"))
    with caplog.at_level(logging.WARNING):
        records = load_records(path, "zsre", seed=0, on_malformed="drop")
    assert [r.record_id for r in records] == ["zsre_drop:0", "zsre_drop:2"]
    assert "zsre_drop.json: record 1: field 'alt' is missing" in caplog.text
    assert "dropped 1 of 3 records as malformed (missing 1)" in caplog.text
