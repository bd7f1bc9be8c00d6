"""Reader for ZsRE in the MEND format (``zsre_mend_train.json`` / ``zsre_mend_eval.json``)."""

from __future__ import annotations

import os
from pathlib import Path

from hiedit.data.raw import (
    DEFAULT_MAX_CHARS,
    Parsed,
    RecordFields,
    apply_policy,
    load_json_list,
    parse_records,
)
from hiedit.data.records import QA, EditRecord

FORMAT = "zsre"
# MEND-format files carry no relation; geofacts adds an optional "relation" key that others ignore.
UNKNOWN_RELATION = "unknown"


def parse_zsre_record(fields: RecordFields, record_id: str) -> EditRecord:
    """One MEND-format record → edit (src, alt), equiv (rephrase, alt), unrel (loc + "?", loc_ans).

    The target key is ``alt`` (some repackaged files call it ``ans``). ``loc`` keeps its literal
    ``"nq question: "`` prefix, as the reference does.
    """
    target = fields.text(fields.first("alt", "ans"))
    relation = fields.text("relation") if fields.has("relation") else UNKNOWN_RELATION
    if fields.has("answers"):
        fields.texts("answers")  # unused, but a wrong type means the file is not what we think
    return EditRecord(
        record_id=record_id,
        subject=fields.text("subject"),
        relation=relation,
        format=FORMAT,
        edit=QA(fields.text("src"), target),
        equiv=QA(fields.text("rephrase"), target),
        unrel=QA(fields.text("loc") + "?", fields.text("loc_ans")),
    )


def parse_zsre(
    path: str | os.PathLike[str], *, max_chars: int | None = DEFAULT_MAX_CHARS
) -> Parsed[EditRecord]:
    """Every record of a ZsRE MEND-format JSON file, valid (ids ``<file stem>:<index>``) or not."""
    path = Path(path)
    raw = load_json_list(path)
    return parse_records(
        path.name,
        raw,
        lambda f: parse_zsre_record(f, f"{path.stem}:{f.index}"),
        max_chars=max_chars,
    )


def read_zsre(
    path: str | os.PathLike[str],
    *,
    on_malformed: str = "fail",
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> list[EditRecord]:
    """The valid records of a ZsRE MEND-format JSON file, in file order (see ``apply_policy``)."""
    return apply_policy(parse_zsre(path, max_chars=max_chars), on_malformed)
