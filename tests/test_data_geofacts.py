"""The embedded geofacts: real facts, deterministic per seed, subject-disjoint splits, real formats."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from hiedit.data import build_geofacts, load_records, write_geofacts
from hiedit.data.geofacts import RAW_FILES, RELATIONS, SOURCE_PACKAGES, collect_facts

SMALL = {"n_eval": 200, "max_per_relation": 300}


@pytest.fixture(scope="module")
def built():
    return build_geofacts(seed=0, **SMALL)


def _subjects(records, fmt):
    if fmt == "zsre":
        return {r["subject"] for r in records}
    return {r["requested_rewrite"]["subject"] for r in records}


def test_facts_are_real():
    facts = {
        (f.relation, f.subject): f.answers for f in collect_facts(seed=0, max_per_relation=None)
    }
    assert facts["capital", "France"] == ("Paris",)
    assert facts["continent", "Brazil"] == ("South America",)
    assert facts["currency", "Japan"] == ("Yen",)
    assert facts["official_language", "Germany"][0] == "German"
    assert "French" in facts["official_language", "Switzerland"]
    assert facts["city_country", "Tokyo"] == ("Japan",)
    assert facts["region_country", "Bayern"] == ("Germany",)
    assert {rel for rel, _ in facts} == set(RELATIONS)


def test_subject_names_are_unique_within_a_relation():
    facts = collect_facts(seed=0, max_per_relation=None)
    keys = [(f.relation, f.subject) for f in facts]
    assert len(keys) == len(set(keys))


def test_splits_are_subject_disjoint_and_sized(built):
    for fmt in ("zsre", "counterfact"):
        train, eval_ = _subjects(built[fmt, "train"], fmt), _subjects(built[fmt, "eval"], fmt)
        assert train and eval_
        assert not train & eval_
    assert len(built["zsre", "eval"]) == SMALL["n_eval"]
    # The CounterFact eval set is the ZsRE one minus facts without a same-object neighbour.
    assert _subjects(built["counterfact", "eval"], "counterfact") <= _subjects(
        built["zsre", "eval"], "zsre"
    )


def test_eval_prefers_well_known_subjects(built):
    eval_subjects = _subjects(built["zsre", "eval"], "zsre")
    train_subjects = _subjects(built["zsre", "train"], "zsre")
    # The two most populous countries form the first pair: one goes to each side.
    assert len({"China", "India"} & eval_subjects) == 1
    assert len({"China", "India"} & train_subjects) == 1
    relations = {r["relation"] for r in built["zsre", "eval"]}
    assert relations == set(RELATIONS)


def test_zsre_records_are_mend_format(built):
    for rec in built["zsre", "eval"]:
        assert set(rec) >= {
            "subject",
            "src",
            "pred",
            "rephrase",
            "alt",
            "answers",
            "loc",
            "loc_ans",
            "cond",
        }
        assert rec["src"].endswith("?") and rec["subject"] in rec["src"]
        assert rec["rephrase"] != rec["src"] and rec["subject"] in rec["rephrase"]
        assert rec["alt"] not in rec["answers"] and rec["pred"] == rec["answers"][0]
        assert rec["loc"].startswith("nq question: ") and not rec["loc"].endswith("?")
        assert rec["subject"] not in rec["loc"]


def test_counterfact_records_are_rome_format(built):
    for rec in built["counterfact", "train"]:
        rw = rec["requested_rewrite"]
        assert "{}" in rw["prompt"]
        assert rw["target_new"]["str"] != rw["target_true"]["str"]
        assert rec["paraphrase_prompts"] and all(
            rw["subject"] in p for p in rec["paraphrase_prompts"]
        )
        assert 1 <= len(rec["neighborhood_prompts"]) <= 5
        own = {t.format(rw["subject"]) for rels in RELATIONS.values() for t in rels.statements}
        assert not own & set(rec["neighborhood_prompts"])  # neighbours are other subjects
        assert rec["attribute_prompts"] == [] and rec["generation_prompts"] == []
    assert [r["case_id"] for r in built["counterfact", "eval"]] == list(
        range(len(built["counterfact", "eval"]))
    )


def test_write_is_deterministic_and_seed_dependent(tmp_path):
    stats = write_geofacts(tmp_path / "a", seed=3, **SMALL)
    write_geofacts(tmp_path / "b", seed=3, **SMALL)
    write_geofacts(tmp_path / "c", seed=4, **SMALL)
    for name in [*RAW_FILES.values(), "stats.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a_eval = json.loads((tmp_path / "a" / "zsre_eval.json").read_text())
    c_eval = json.loads((tmp_path / "c" / "zsre_eval.json").read_text())
    assert _subjects(a_eval, "zsre") != _subjects(c_eval, "zsre")
    assert stats["records"]["zsre"]["eval"] == SMALL["n_eval"]
    assert sum(stats["per_relation"]["zsre"]["eval"].values()) == SMALL["n_eval"]
    assert stats["sources"] == {name: metadata.version(name) for name in SOURCE_PACKAGES}


def test_source_packages_are_pinned_alike_in_pyproject_and_the_conda_env():
    # The records are the packages' data: a range would let two installs build other facts.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((root / "envs" / "hiedit.yaml").read_text())
    conda_pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    for name in SOURCE_PACKAGES:
        pins = [d for d in project if re.match(rf"{name}\b", d)]
        assert len(pins) == 1 and re.fullmatch(rf"{name}==[\w.]+", pins[0]), pins
        assert pins[0] in conda_pip, (pins[0], conda_pip)


def test_raw_files_read_back_with_the_real_readers(tmp_path):
    stats = write_geofacts(tmp_path, seed=1, **SMALL)
    for (fmt, split), name in RAW_FILES.items():
        records = load_records(tmp_path / name, fmt, seed=0)
        assert len(records) == stats["records"][fmt][split]
        assert all(r.format == fmt and r.relation in RELATIONS for r in records)
        if fmt == "counterfact":
            assert all(r.edit.old == r.equiv.old == r.unrel.target for r in records)


def test_unrelated_answers_share_no_word_with_the_edited_answers(built):
    def words(text):
        return set(re.findall(r"\w+", text.lower()))

    for split in ("train", "eval"):
        for record in built["zsre", split]:
            edited = words(record["alt"]) | words(record["pred"])
            assert not words(record["loc_ans"]) & edited, record


@pytest.mark.slow
def test_a_long_eval_stream_extends_the_balanced_one_without_touching_it():
    """The 20,000-edit stream: the balanced eval records first, then facts moved from train."""
    short = build_geofacts(0, n_eval=300, max_per_relation=None)
    long = build_geofacts(0, n_eval=300, max_per_relation=None, n_extra=21000)
    for fmt in ("zsre", "counterfact"):
        head = short[fmt, "eval"]
        assert long[fmt, "eval"][: len(head)] == head
        assert not _subjects(long[fmt, "eval"], fmt) & _subjects(long[fmt, "train"], fmt)
    assert len(long["zsre", "eval"]) == 300 + 21000
    assert len(long["zsre", "train"]) > 10000
