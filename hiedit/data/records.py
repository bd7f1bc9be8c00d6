"""The record model every data format is turned into: one edit request with three (prompt, answer) tuples."""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("zsre", "counterfact")
ROLES = ("edit", "equiv", "unrel")


@dataclass(frozen=True)
class QA:
    """One teacher-forced (prompt, answer) pair.

    ``old`` is set only for CounterFact: the competing answer whose logits the metric compares
    against ``target`` (the true object for edit/equiv, the new object for unrel).
    """

    prompt: str
    target: str
    old: str | None = None


@dataclass(frozen=True)
class EditRecord:
    """One edit request: the edit itself, a paraphrase (generalisation) and an unrelated fact (locality)."""

    record_id: str
    subject: str
    relation: str
    format: str  # "zsre" | "counterfact"
    edit: QA
    equiv: QA
    unrel: QA

    def role(self, name: str) -> QA:
        """The tuple for ``name`` in ``ROLES`` ("edit", "equiv" or "unrel")."""
        if name not in ROLES:
            raise KeyError(f"unknown role {name!r}; expected one of {ROLES}")
        return getattr(self, name)
