"""Reading the result files the report is built from; every error names the file at fault.

Run folders follow the workflow's layout ``<root>/{model}/{dataset}/{variant}/seed{seed}/<file>``,
so the identity of a ``per_edit.csv`` or ``train_log.csv`` is read from its path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hiedit.errors import HiEditError
from hiedit.phases import EDIT_PHASES, phase_column

if TYPE_CHECKING:
    import pandas as pd

METRICS_COLUMNS = ("model", "dataset", "variant", "seed", "n_edits", "metric", "value")
PER_EDIT_COLUMNS = ("index", "relation", "selected", "seconds")
# Per-phase times of an edit, kept where a run wrote them.
PHASE_COLUMNS = tuple(phase_column(phase) for phase in EDIT_PHASES)
RUN_COLUMNS = ("model", "dataset", "variant", "seed")
# Step-like columns a training log may be indexed by, in order of preference.
# global_step first: "step" restarts at 0 in every trajectory.
TRAIN_X_CANDIDATES = ("global_step", "step", "trajectory")
MODULE_SEPARATOR = ";"
NO_RELATION = "(none)"

_RUN_DIR = re.compile(r"^seed(?P<seed>\d+)$")


class ReportInputError(HiEditError):
    """A result file the report reads is missing, unreadable or malformed (names the file)."""


def read_csv(path: str | os.PathLike[str], required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV file; raise :class:`ReportInputError` naming it if it lacks ``required`` columns."""
    import pandas as pd

    source = str(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError as err:
        raise ReportInputError(f"{source}: file not found") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReportInputError(f"{source}: not a readable CSV file ({err})") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ReportInputError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, frame.columns)) or 'none'}"
        )
    return frame


def run_identity(path: str | os.PathLike[str]) -> dict[str, str | int]:
    """``model, dataset, variant, seed`` of a file in a ``{model}/{dataset}/{variant}/seed{seed}`` folder."""
    parts = Path(path).parts
    match = _RUN_DIR.match(parts[-2]) if len(parts) >= 5 else None
    if match is None:
        raise ReportInputError(
            f"{path}: expected a path ending in {{model}}/{{dataset}}/{{variant}}/seed{{seed}}/<file>"
        )
    return {
        "model": parts[-5],
        "dataset": parts[-4],
        "variant": parts[-3],
        "seed": int(match["seed"]),
    }


def read_metrics(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The tidy metrics table (rates in [0, 1], KL divergences in nats), checked and typed."""
    import pandas as pd

    frame = read_csv(path, METRICS_COLUMNS)
    for column in ("seed", "n_edits", "value"):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        if numbers.isna().any():
            row = int(numbers.isna().to_numpy().argmax())
            raise ReportInputError(
                f"{path}: row {row}: column '{column}' must be a number, got {frame[column].iloc[row]!r}"
            )
        frame[column] = numbers
    frame["seed"] = frame["seed"].astype("int64")
    frame["n_edits"] = frame["n_edits"].astype("int64")
    for column in ("model", "dataset", "variant", "metric"):
        frame[column] = frame[column].astype(str)
    return frame[list(METRICS_COLUMNS)]


def read_per_edit(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """``per_edit.csv`` files of several runs as one table: run identity + index, relation, selected, seconds.

    ``selected`` stays the ``;``-joined module names (empty when no module was edited); a missing
    relation becomes ``"(none)"``. The :data:`PHASE_COLUMNS` are kept when every file has them.
    """
    import pandas as pd

    frames = []
    for path in paths:
        identity = run_identity(path)
        frame = read_csv(path, PER_EDIT_COLUMNS)
        phases = [c for c in PHASE_COLUMNS if c in frame.columns]
        frame = frame[[*PER_EDIT_COLUMNS, *phases]].copy()
        for column in ("seconds", *phases):
            values = pd.to_numeric(frame[column], errors="coerce")
            if values.isna().any():
                row = int(values.isna().to_numpy().argmax())
                raise ReportInputError(f"{path}: row {row}: column {column!r} must be a number")
            frame[column] = values.astype("float64")
        frame["selected"] = frame["selected"].fillna("").astype(str)
        frame["relation"] = frame["relation"].fillna(NO_RELATION).astype(str)
        for key, value in identity.items():
            frame[key] = value
        frames.append(frame)
    if not frames:
        raise ReportInputError("no per_edit.csv file given")
    phases = [c for c in PHASE_COLUMNS if all(c in f.columns for f in frames)]
    return pd.concat(frames, ignore_index=True)[[*RUN_COLUMNS, *PER_EDIT_COLUMNS, *phases]]


def detect_train_columns(
    columns: Sequence[str], source: str, x: str | None = None, y: Sequence[str] | None = None
) -> tuple[str, list[str]]:
    """The x column (given, or the first of :data:`TRAIN_X_CANDIDATES`) and the loss columns.

    Without ``y`` every column whose name contains ``loss`` is a loss column.
    """
    if x is None:
        x = next((c for c in TRAIN_X_CANDIDATES if c in columns), None)
        if x is None:
            raise ReportInputError(
                f"{source}: no step column (one of {', '.join(TRAIN_X_CANDIDATES)}); "
                f"found {', '.join(columns)}"
            )
    elif x not in columns:
        raise ReportInputError(f"{source}: missing column {x}; found {', '.join(columns)}")
    if y is None:
        y = [c for c in columns if "loss" in c.lower() and c != x]
        if not y:
            raise ReportInputError(
                f"{source}: no loss column (a name containing 'loss'); found {', '.join(columns)}"
            )
    else:
        missing = [c for c in y if c not in columns]
        if missing:
            raise ReportInputError(
                f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}"
            )
    return x, list(y)


def read_train_logs(
    paths: Iterable[str | os.PathLike[str]],
    x: str | None = None,
    y: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Training logs of several runs in long form and the name of their step column.

    Columns: run identity, ``step`` (the x column's values), ``loss`` (the loss column's name)
    and ``value``. Every log must have the same x column.
    """
    import pandas as pd

    frames = []
    x_name: str | None = None
    for path in paths:
        identity = run_identity(path)
        raw = read_csv(path)
        columns = [str(c) for c in raw.columns]
        this_x, losses = detect_train_columns(columns, str(path), x, y)
        if x_name is not None and this_x != x_name:
            raise ReportInputError(
                f"{path}: step column {this_x} differs from the others' {x_name}"
            )
        x_name = this_x
        long = raw[[this_x, *losses]].melt(id_vars=this_x, var_name="loss", value_name="value")
        long = long.rename(columns={this_x: "step"})
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        for key, value in identity.items():
            long[key] = value
        frames.append(long.dropna(subset=["value"]))
    if not frames or x_name is None:
        raise ReportInputError("no train_log.csv file given")
    frame = pd.concat(frames, ignore_index=True)
    return frame[[*RUN_COLUMNS, "step", "loss", "value"]], x_name
