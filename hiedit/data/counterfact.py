"""Reader for CounterFact, in the ROME format (``counterfact.json``) or EasyEdit's repackaging.

The flavour is detected per file from the first record: ROME records hold a ``requested_rewrite``
object; EasyEdit records hold flat ``prompt``/``target_new``/``ground_truth`` fields.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from hiedit.data.raw import (
    DEFAULT_MAX_CHARS,
    DUPLICATE_ID,
    INVALID,
    WRONG_TYPE,
    Parsed,
    RecordFields,
    apply_policy,
    load_json_list,
    parse_records,
)
from hiedit.data.records import QA, EditRecord
from hiedit.errors import DataError

FORMAT = "counterfact"
ROME, EASYEDIT = "rome", "easyedit"
UNKNOWN_RELATION = "unknown"


def detect_flavour(file: str, raw: list) -> str:
    """``"rome"`` or ``"easyedit"``, from the keys of the file's first record that has either
    flavour's keys (a broken record at the top does not decide for the whole file)."""
    if not raw:
        return ROME
    for record in raw:
        if isinstance(record, dict):
            if "requested_rewrite" in record:
                return ROME
            if "prompt" in record and "target_new" in record:
                return EASYEDIT
    raise DataError(
        f"{file}: record 0: not a CounterFact record (neither a 'requested_rewrite' object "
        "(ROME format) nor 'prompt' and 'target_new' fields (EasyEdit format)), nor is any later one"
    )


def _easyedit_record_id(fields: RecordFields, stem: str) -> str:
    if not fields.has("case_id"):
        return f"{stem}:{fields.index}"
    case_id = fields.value("case_id")
    if isinstance(case_id, bool) or not isinstance(case_id, int | str):
        raise fields.error(
            "case_id", f"is a {type(case_id).__name__}, expected an integer or string", WRONG_TYPE
        )
    return f"{stem}:{case_id}"


def _rome_record_id(fields: RecordFields, stem: str, seen: dict[int, int]) -> str:
    """``<stem>:<case_id>``; ROME's case ids are integers and unique within a file (``seen``
    maps each id read so far to its record index)."""
    case_id = fields.value("case_id")
    if isinstance(case_id, bool) or not isinstance(case_id, int):
        raise fields.error(
            "case_id", f"is a {type(case_id).__name__}, expected an integer", WRONG_TYPE
        )
    if case_id in seen:
        raise fields.error(
            "case_id",
            f"is {case_id}, the same as record {seen[case_id]}'s (case ids must be unique)",
            DUPLICATE_ID,
        )
    seen[case_id] = fields.index
    return f"{stem}:{case_id}"


def parse_rome_record(
    fields: RecordFields, stem: str, rng: random.Random, seen: dict[int, int] | None = None
) -> EditRecord:
    """ROME-format record → edit (filled rewrite prompt), equiv (a paraphrase), unrel (a neighbour).

    One paraphrase and one neighbourhood prompt are drawn from ``rng``, in that order. ``seen``
    (case id -> record index, updated) catches a case id repeated within a file.
    """
    record_id = _rome_record_id(fields, stem, {} if seen is None else seen)
    template = fields.text("requested_rewrite.prompt")
    if "{}" not in template:
        raise fields.error("requested_rewrite.prompt", "has no '{}' slot for the subject", INVALID)
    subject = fields.text("requested_rewrite.subject")
    relation = fields.text("requested_rewrite.relation_id")
    new = fields.text("requested_rewrite.target_new.str")
    true = fields.text("requested_rewrite.target_true.str")
    paraphrase = rng.choice(fields.texts("paraphrase_prompts"))
    neighbour = rng.choice(fields.texts("neighborhood_prompts"))
    return EditRecord(
        record_id=record_id,
        subject=subject,
        relation=relation,
        format=FORMAT,
        edit=QA(template.replace("{}", subject), new, true),
        equiv=QA(paraphrase, new, true),
        unrel=QA(neighbour, true, new),
    )


def _single_text(fields: RecordFields, path: str) -> str:
    """A string field that some repackagings wrap in a list: the first item is the answer."""
    return fields.texts(path)[0]


def parse_easyedit_record(fields: RecordFields, stem: str, rng: random.Random) -> EditRecord:
    """EasyEdit-format record → edit (prompt, target_new), equiv (rephrase_prompt), unrel (locality).

    ``rephrase_prompt`` and ``locality_prompt`` may be strings or lists (one item is drawn from
    ``rng``, rephrase first); ``locality_ground_truth`` is a string or a list aligned with the
    locality prompts; ``ground_truth`` may be wrapped in a list (its first item is used).
    """
    record_id = _easyedit_record_id(fields, stem)
    new = _single_text(fields, "target_new")
    true = _single_text(fields, "ground_truth")
    relation = fields.text("relation_id") if fields.has("relation_id") else UNKNOWN_RELATION
    rephrase = rng.choice(fields.texts("rephrase_prompt"))
    loc_prompts = fields.texts("locality_prompt")
    loc_truths = fields.texts("locality_ground_truth")
    if len(loc_truths) not in (1, len(loc_prompts)):
        raise fields.error(
            "locality_ground_truth",
            f"has {len(loc_truths)} items for {len(loc_prompts)} locality prompts",
            INVALID,
        )
    pick = rng.randrange(len(loc_prompts))
    loc_truth = loc_truths[pick] if len(loc_truths) > 1 else loc_truths[0]
    return EditRecord(
        record_id=record_id,
        subject=fields.text("subject"),
        relation=relation,
        format=FORMAT,
        edit=QA(fields.text("prompt"), new, true),
        equiv=QA(rephrase, new, true),
        unrel=QA(loc_prompts[pick], loc_truth, new),
    )


def parse_counterfact(
    path: str | os.PathLike[str], *, seed: int, max_chars: int | None = DEFAULT_MAX_CHARS
) -> Parsed[EditRecord]:
    """Every record of a CounterFact file, valid (ids ``<file stem>:<case_id>``) or not.

    ``seed`` drives the one-time choice of paraphrase and neighbourhood prompts, so every run
    (and every variant) that prepares the file with the same seed sees the same tuples.
    """
    path = Path(path)
    raw = load_json_list(path)
    rng = random.Random(seed)
    if detect_flavour(path.name, raw) == ROME:
        seen: dict[int, int] = {}
        parse = lambda f: parse_rome_record(f, path.stem, rng, seen)  # noqa: E731
    else:
        parse = lambda f: parse_easyedit_record(f, path.stem, rng)  # noqa: E731
    return parse_records(path.name, raw, parse, max_chars=max_chars)


def read_counterfact(
    path: str | os.PathLike[str],
    *,
    seed: int,
    on_malformed: str = "fail",
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> list[EditRecord]:
    """The valid records of a CounterFact file in file order (see ``parse_counterfact`` and
    ``apply_policy``)."""
    return apply_policy(parse_counterfact(path, seed=seed, max_chars=max_chars), on_malformed)
