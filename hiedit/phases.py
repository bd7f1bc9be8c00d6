"""The timed phases of one sequential edit: ``EditStep.phases`` and ``per_edit.csv``'s columns.

Kept apart from the editor (which imports torch) so the report can read the columns without it.
"""

EDIT_PHASES = ("capture", "route", "update", "commit")


def phase_column(phase: str) -> str:
    """The ``per_edit.csv`` column holding a phase's seconds."""
    return f"{phase}_seconds"
