"""Reading the result files the report is built from; every error names the file at fault.

Run folders follow the workflow's layout ``<root>/{model}/{dataset}/{variant}/seed{seed}/<file>``,
so the identity of a ``per_edit.csv`` or ``train_log.csv`` is read from its path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hiedit.errors import HiEditError
from hiedit.phases import EDIT_PHASES, phase_column
from hiedit.validation_metrics import LOGGED_METRICS

if TYPE_CHECKING:
    import pandas as pd

METRICS_COLUMNS = ("model", "dataset", "variant", "seed", "n_edits", "metric", "value")
PER_EDIT_COLUMNS = ("index", "relation", "selected", "seconds")
# Per-phase times of an edit, kept where a run wrote them.
PHASE_COLUMNS = tuple(phase_column(phase) for phase in EDIT_PHASES)
# Wall time of the whole edit call and resident memory after it: absent from older result files,
# so a run without them reads as missing values instead of failing the report.
MEASURE_COLUMNS = ("wall_seconds", "rss_mib")
RUN_COLUMNS = ("model", "dataset", "variant", "seed")
# Step-like columns a training log may be indexed by, in order of preference.
# global_step first: "step" restarts at 0 in every trajectory.
TRAIN_X_CANDIDATES = ("global_step", "step", "trajectory")
MODULE_SEPARATOR = ";"
# The step-size search logs each candidate's step size per module as ``step_<module>``.
STEP_PREFIX = "step_"
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


def _numeric(frame: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    """Make ``columns`` float in place; a non-number names the file, the row and the column."""
    import pandas as pd

    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise ReportInputError(f"{source}: row {row}: column {column!r} must be a number")
        frame[column] = values.astype("float64")


def read_per_edit(
    paths: Iterable[str | os.PathLike[str]], required: Sequence[str] = ()
) -> pd.DataFrame:
    """``per_edit.csv`` files of several runs as one table: run identity + index, relation, selected, seconds.

    ``selected`` stays the ``;``-joined module names (empty when no module was edited); a missing
    relation becomes ``"(none)"``. The :data:`PHASE_COLUMNS` are kept when every file has them;
    the :data:`MEASURE_COLUMNS` whenever one file has them (missing values for the others).
    ``required``: further columns every file must have.
    """
    import pandas as pd

    frames = []
    for path in paths:
        identity = run_identity(path)
        frame = read_csv(path, (*PER_EDIT_COLUMNS, *required))
        phases = [c for c in PHASE_COLUMNS if c in frame.columns]
        measures = [c for c in MEASURE_COLUMNS if c in frame.columns]
        frame = frame[[*PER_EDIT_COLUMNS, *phases, *measures]].copy()
        for column in ("seconds", *phases, *required):
            if frame[column].isna().any():
                row = int(frame[column].isna().to_numpy().argmax())
                raise ReportInputError(f"{path}: row {row}: column {column!r} must be a number")
        _numeric(frame, ("seconds", *phases, *measures), str(path))
        # A column with no value at all reads as float NaN: fill as objects, then make text.
        for column, blank in (("selected", ""), ("relation", NO_RELATION)):
            values = frame[column].astype(object)
            frame[column] = values.where(values.notna(), blank).astype(str)
        for key, value in identity.items():
            frame[key] = value
        frames.append(frame)
    if not frames:
        raise ReportInputError("no per_edit.csv file given")
    phases = [c for c in PHASE_COLUMNS if all(c in f.columns for f in frames)]
    measures = [c for c in MEASURE_COLUMNS if any(c in f.columns for f in frames)]
    table = pd.concat(frames, ignore_index=True)
    for column in measures:
        table[column] = table[column].astype("float64")
    return table[[*RUN_COLUMNS, *PER_EDIT_COLUMNS, *phases, *measures]]


def read_curves(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """``curve.csv`` files (one row per learning-curve checkpoint) in long form.

    Columns: run identity, ``n_edits``, ``metric``, ``value`` (the sample's metric, in [0, 1] for
    the rates). A file with no checkpoint row contributes nothing.
    """
    import pandas as pd

    frames = []
    for path in paths:
        identity = run_identity(path)
        frame = read_csv(path, ("n_edits",))
        metrics = [c for c in frame.columns if c not in ("n_edits", "n_scored")]
        if not metrics:
            raise ReportInputError(f"{path}: no metric column beside n_edits, n_scored")
        _numeric(frame, ("n_edits", *metrics), str(path))
        long = frame[["n_edits", *metrics]].melt(
            id_vars="n_edits", var_name="metric", value_name="value"
        )
        for key, value in identity.items():
            long[key] = value
        frames.append(long.dropna(subset=["value"]))
    if not frames:
        raise ReportInputError("no curve.csv file given")
    table = pd.concat(frames, ignore_index=True)
    table["n_edits"] = table["n_edits"].astype("int64")
    return table[[*RUN_COLUMNS, "n_edits", "metric", "value"]]


# A trained editor's validation.csv: one row per validation, after ``trajectory`` trajectories.
# The step-size search writes one row per candidate instead (its search phase and step sizes).
VALIDATION_X = "trajectory"
CANDIDATE_COLUMNS = ("candidate", "phase", "score")
# A baseline's grid search (hiedit/baselines/tuning.py) writes one row per candidate too, with
# its hyperparameter values (any type), timings and an error text: only its scores are read, as
# candidates of the phase GRID_PHASE.
GRID_COLUMNS = ("candidate", "score", "chosen")
GRID_PHASE = "grid search"
GRID_METRICS = ("score", *LOGGED_METRICS)


@dataclass
class ValidationLogs:
    """What the validation files hold, in long form (run identity, x, ``metric``, ``value``).

    ``trajectories``: trained editors' validations (x: ``trajectory``); ``candidates``: the
    step-size search's candidates (x: ``candidate``, with its ``phase``); ``empty``: the runs
    whose file has no row (no validation slice).
    """

    trajectories: pd.DataFrame
    candidates: pd.DataFrame
    empty: list[dict[str, str | int]] = field(default_factory=list)


def read_validation(paths: Iterable[str | os.PathLike[str]]) -> ValidationLogs:
    """Read ``validation.csv`` files of trained editors and of the step-size search."""
    import pandas as pd

    trajectories, candidates, empty = [], [], []
    given = False
    for path in paths:
        given = True
        identity = run_identity(path)
        frame = read_csv(path)
        grid = False
        if VALIDATION_X in frame.columns:
            x, ids, out = VALIDATION_X, [VALIDATION_X], trajectories
        elif all(c in frame.columns for c in CANDIDATE_COLUMNS):
            x, ids, out = "candidate", ["candidate", "phase"], candidates
        elif all(c in frame.columns for c in GRID_COLUMNS):
            x, ids, out, grid = "candidate", ["candidate", "phase"], candidates, True
        else:
            raise ReportInputError(
                f"{path}: expected a {VALIDATION_X!r} column (a trained editor's validations), "
                f"{', '.join(CANDIDATE_COLUMNS)} (a step-size search) or "
                f"{', '.join(GRID_COLUMNS)} (a baseline's grid search); "
                f"found {', '.join(map(str, frame.columns)) or 'none'}"
            )
        if frame.empty:
            empty.append(identity)
            continue
        if grid:
            frame = frame.assign(phase=GRID_PHASE)
            metrics = [c for c in GRID_METRICS if c in frame.columns]
        else:
            metrics = [
                c for c in frame.columns if c not in ids and not str(c).startswith(STEP_PREFIX)
            ]
        _numeric(frame, (x, *metrics), str(path))
        long = frame[[*ids, *metrics]].melt(id_vars=ids, var_name="metric", value_name="value")
        long[x] = long[x].astype("int64")
        for key, value in identity.items():
            long[key] = value
        out.append(long.dropna(subset=["value"]))
    if not given:
        raise ReportInputError("no validation.csv file given")
    columns = {
        "trajectories": [*RUN_COLUMNS, VALIDATION_X, "metric", "value"],
        "candidates": [*RUN_COLUMNS, "candidate", "phase", "metric", "value"],
    }

    def join(frames, names):
        if not frames:
            return pd.DataFrame(columns=names)
        return pd.concat(frames, ignore_index=True)[names]

    return ValidationLogs(
        join(trajectories, columns["trajectories"]),
        join(candidates, columns["candidates"]),
        empty,
    )


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
