"""Result files of an evaluation run, written all-or-nothing, and the gather step that tables them.

An evaluation folder holds ``per_edit.csv``, ``curve.csv``, ``metrics_long.csv``, ``runinfo.json``
and ``metrics.json``. All five are first written to temporary files in the folder and renamed into
place only when every one of them was written; ``metrics.json`` is renamed last, so its presence
means the folder is complete. A failure at any point leaves no temporary and no new result file.

``metrics_long.csv`` is tidy, with exactly the columns :data:`LONG_COLUMNS`; :func:`gather`
concatenates such files (validating each) into the project's metrics table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiedit.atomic import atomic_path, json_writer, write_all_or_nothing
from hiedit.errors import HiEditError

if TYPE_CHECKING:
    import pandas as pd

LONG_COLUMNS = ("model", "dataset", "variant", "seed", "n_edits", "metric", "value")
KEY_COLUMNS = LONG_COLUMNS[:-1]
METRICS_FILE = "metrics.json"
LONG_FILE = "metrics_long.csv"
PER_EDIT_FILE = "per_edit.csv"
CURVE_FILE = "curve.csv"
RUNINFO_FILE = "runinfo.json"
RESULT_FILES = (PER_EDIT_FILE, CURVE_FILE, LONG_FILE, RUNINFO_FILE, METRICS_FILE)


# Metrics that are not rates in [0, 1] (a KL divergence, in nats), possibly prefixed.
UNBOUNDED_SUFFIXES = ("_kl",)


def is_unbounded(metric: str) -> bool:
    """Whether a metric may exceed 1 (every metric is non-negative)."""
    return metric.endswith(UNBOUNDED_SUFFIXES)


class ResultFileError(HiEditError):
    """A result file is missing, unreadable or malformed (the message names the file)."""


def csv_writer(frame: pd.DataFrame) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        frame.to_csv(tmp, index=False)

    return write


def clear_results(out_dir: str | os.PathLike[str]) -> None:
    """Remove result files of an earlier run so that a failed rerun cannot look complete."""
    out = Path(out_dir)
    # The completeness marker first: a half-cleared folder must never look complete.
    for name in reversed(RESULT_FILES):
        (out / name).unlink(missing_ok=True)


def long_rows(
    identity: Mapping[str, Any], n_edits: int, metrics: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Tidy rows (:data:`LONG_COLUMNS`) for ``metrics`` measured after ``n_edits`` edits."""
    return [
        {
            "model": identity["model"],
            "dataset": identity["dataset"],
            "variant": identity["variant"],
            "seed": int(identity["seed"]),
            "n_edits": int(n_edits),
            "metric": name,
            "value": float(value),
        }
        for name, value in metrics.items()
    ]


def validate_long(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a tidy metrics table; return it with :data:`LONG_COLUMNS` in order and typed.

    Raises :class:`ResultFileError` naming ``source`` and the first offending column/row.
    """
    import pandas as pd

    columns = list(frame.columns)
    if sorted(columns) != sorted(LONG_COLUMNS) or len(columns) != len(LONG_COLUMNS):
        missing = [c for c in LONG_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in LONG_COLUMNS]
        raise ResultFileError(
            f"{source}: columns must be exactly {', '.join(LONG_COLUMNS)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(map(str, extra))}" if extra else "")
        )
    frame = frame[list(LONG_COLUMNS)].copy()
    for column in LONG_COLUMNS:
        nulls = frame[column].isna()
        if nulls.any():
            raise ResultFileError(
                f"{source}: row {int(nulls.idxmax())}: column '{column}' is empty"
            )
    for column in ("seed", "n_edits"):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() | (numbers != numbers.round()) | (numbers < 0)
        if bad.any():
            row = int(bad.idxmax())
            raise ResultFileError(
                f"{source}: row {row}: column '{column}' must be a non-negative integer, "
                f"got {frame[column].iloc[row]!r}"
            )
        frame[column] = numbers.astype("int64")
    values = pd.to_numeric(frame["value"], errors="coerce")
    unbounded = frame["metric"].astype(str).map(is_unbounded).astype(bool)
    in_range = values.between(0.0, 1.0) | (unbounded & (values >= 0.0) & values.abs().lt(math.inf))
    bad = values.isna() | ~in_range
    if bad.any():
        row = int(bad.idxmax())
        expected = "a non-negative finite number" if unbounded.iloc[row] else "a number in [0, 1]"
        raise ResultFileError(
            f"{source}: row {row}: column 'value' must be {expected}, got {frame['value'].iloc[row]!r}"
        )
    frame["value"] = values.astype("float64")
    for column in ("model", "dataset", "variant", "metric"):
        frame[column] = frame[column].astype(str)
    duplicated = frame.duplicated(list(KEY_COLUMNS))
    if duplicated.any():
        row = int(duplicated.idxmax())
        raise ResultFileError(
            f"{source}: row {row}: duplicate {dict(frame.loc[row, list(KEY_COLUMNS)])}"
        )
    return frame


def gather(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate tidy ``metrics_long.csv`` files into one table, validating every file.

    Errors name the file: unreadable, wrong columns, empty or non-numeric values, values outside
    [0, 1], or a (model, dataset, variant, seed, n_edits, metric) key already seen in another file.
    """
    import pandas as pd

    frames = []
    owner: dict[tuple, str] = {}
    for path in paths:
        source = str(path)
        try:
            raw = pd.read_csv(path, keep_default_na=True)
        except FileNotFoundError as err:
            raise ResultFileError(f"{source}: file not found") from err
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ResultFileError(f"{source}: not a readable CSV file ({err})") from err
        frame = validate_long(raw, source)
        for key in frame[list(KEY_COLUMNS)].itertuples(index=False, name=None):
            if key in owner:
                raise ResultFileError(
                    f"{source}: {dict(zip(KEY_COLUMNS, key, strict=True))} already in {owner[key]}"
                )
            owner[key] = source
        frames.append(frame)
    if not frames:
        return pd.DataFrame(
            {
                c: pd.Series(
                    dtype="int64"
                    if c in ("seed", "n_edits")
                    else ("float64" if c == "value" else "object")
                )
                for c in LONG_COLUMNS
            }
        )
    return pd.concat(frames, ignore_index=True)


def write_table(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Write ``frame`` as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def finite_metrics(metrics: Mapping[str, float], source: str) -> dict[str, float]:
    """``metrics`` as plain floats; a NaN/inf or a value outside [0, 1] is an error naming it."""
    out = {}
    for name, value in metrics.items():
        value = float(value)
        bounded = not is_unbounded(name)
        if not math.isfinite(value) or value < 0.0 or (bounded and value > 1.0):
            raise ResultFileError(f"{source}: metric {name} = {value} is out of range")
        out[name] = value
    return out


def write_evaluation(
    out_dir: str | os.PathLike[str],
    *,
    summary: Mapping[str, Any],
    long: pd.DataFrame,
    per_edit: pd.DataFrame,
    curve: pd.DataFrame,
    runinfo: Mapping[str, Any],
) -> list[Path]:
    """Write the five result files of one evaluation run all-or-nothing (``metrics.json`` last)."""
    validate_long(long, LONG_FILE)
    writers = {
        PER_EDIT_FILE: csv_writer(per_edit),
        CURVE_FILE: csv_writer(curve),
        LONG_FILE: csv_writer(long),
        RUNINFO_FILE: json_writer(dict(runinfo)),
        METRICS_FILE: json_writer(dict(summary)),
    }
    return write_all_or_nothing(out_dir, writers)
