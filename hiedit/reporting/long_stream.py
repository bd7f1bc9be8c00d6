"""Figure 8 and its tables: cost and learning curves along the long stream.

The long stream's per-edit files log each edit's wall time (``wall_seconds``: the whole
``edit_records`` call, shared out over its records) and the resident memory of the process after
it (``rss_mib``). Single edits are noisy (a garbage collection, a page fault), so the stream is cut
into windows of consecutive edits and each window is summarised by its medians; the question is
whether the last window costs what the first did (the study asks for a time ratio within 10 % and
a flat RSS).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hiedit.reporting.figures import (
    CURVE_METRICS,
    _run_label,
    _save,
    _setup,
    _t_interval,
    variant_palette,
)
from hiedit.reporting.inputs import RUN_COLUMNS, ReportInputError
from hiedit.reporting.tables import mean_interval, order_variants

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_WINDOW = 1000
# A partial last window counts only if it holds at least this share of a window.
MIN_WINDOW_SHARE = 0.5
TIME_TOLERANCE = 1.10  # the study's target: the last window's time within 10 % of the first's
LONG_CURVE_METRICS: dict[str, str] = {
    **CURVE_METRICS,
    "specificity_agreement_correct": "Specificity agreement (correct)",
}
WINDOW_COLUMNS = (
    *RUN_COLUMNS,
    "window",
    "first_edit",
    "last_edit",
    "n_edits",
    "median_wall_ms",
    "median_editor_ms",
    "median_rss_mib",
    "max_rss_mib",
)


def stream_windows(per_edit: pd.DataFrame, window: int = DEFAULT_WINDOW) -> pd.DataFrame:
    """Per run and window of ``window`` consecutive edits: the medians of its cost columns.

    ``per_edit`` is :func:`hiedit.reporting.inputs.read_per_edit`'s table with ``wall_seconds``
    and ``rss_mib``. Columns: :data:`WINDOW_COLUMNS` (times in ms). A last window shorter than
    :data:`MIN_WINDOW_SHARE` of ``window`` is dropped; a run with fewer than two windows left is
    an error naming it.
    """
    import pandas as pd

    if window < 1:
        raise ReportInputError(f"the window must hold at least one edit, got {window}")
    missing = [c for c in ("wall_seconds", "rss_mib") if c not in per_edit.columns]
    if missing:
        raise ReportInputError(f"per-edit files without column(s) {', '.join(missing)}")
    frames = []
    for identity, run in per_edit.groupby(list(RUN_COLUMNS)):
        run = run.sort_values("index")
        groups = run.groupby(run["index"] // window)
        frame = pd.DataFrame(
            {
                "first_edit": groups["index"].min(),
                "last_edit": groups["index"].max(),
                "n_edits": groups.size(),
                "median_wall_ms": groups["wall_seconds"].median() * 1000.0,
                "median_editor_ms": groups["seconds"].median() * 1000.0,
                "median_rss_mib": groups["rss_mib"].median(),
                "max_rss_mib": groups["rss_mib"].max(),
            }
        )
        frame = frame[frame["n_edits"] >= MIN_WINDOW_SHARE * window]
        if len(frame) < 2:
            name = "/".join(str(v) for v in identity[:3]) + f"/seed{identity[3]}"
            raise ReportInputError(
                f"run {name}: {len(run)} edits make fewer than two windows of {window} edits; "
                "give a smaller window"
            )
        frame = frame.reset_index(drop=True).rename_axis("window").reset_index()
        for key, value in zip(RUN_COLUMNS, identity, strict=True):
            frame[key] = value
        frames.append(frame)
    if not frames:
        raise ReportInputError("no edits in the long stream's per-edit files")
    return pd.concat(frames, ignore_index=True)[list(WINDOW_COLUMNS)]


def stream_summary(windows: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per run: the first and last windows' medians, their ratio and the RSS growth.

    ``time_ratio``: the last window's median wall time per edit over the first's (and
    ``editor_time_ratio`` for the editor's own time); ``rss_growth_mib``: the last window's median
    RSS minus the first's; ``time_within_10pct``: whether ``time_ratio`` ≤ 1.10.
    """
    import pandas as pd

    rows = []
    for identity, run in windows.groupby(list(RUN_COLUMNS)):
        run = run.sort_values("window")
        first, last = run.iloc[0], run.iloc[-1]
        rows.append(
            {
                **dict(zip(RUN_COLUMNS, identity, strict=True)),
                "n_edits": int(run["n_edits"].sum()),
                "window": window,
                "n_windows": len(run),
                "first_wall_ms": first["median_wall_ms"],
                "last_wall_ms": last["median_wall_ms"],
                "time_ratio": last["median_wall_ms"] / first["median_wall_ms"],
                "editor_time_ratio": last["median_editor_ms"] / first["median_editor_ms"],
                "first_rss_mib": first["median_rss_mib"],
                "last_rss_mib": last["median_rss_mib"],
                "rss_growth_mib": last["median_rss_mib"] - first["median_rss_mib"],
                "rss_ratio": last["median_rss_mib"] / first["median_rss_mib"],
                "peak_rss_mib": run["max_rss_mib"].max(),
                "time_within_10pct": bool(
                    last["median_wall_ms"] <= TIME_TOLERANCE * first["median_wall_ms"]
                ),
            }
        )
    return pd.DataFrame(rows)


def _raw_interval(values: pd.Series) -> tuple[float, float]:
    interval = mean_interval(values.tolist())
    return interval.low, interval.high


def long_stream_figure(
    windows: pd.DataFrame, curves: pd.DataFrame | None, out: str | os.PathLike[str]
) -> None:
    """Figure 8: per-edit wall time and RSS (window medians) and the learning curves along the
    long stream, one row of panels per model × dataset, one line per variant (mean over seeds,
    95 % t-interval with several)."""
    _setup()
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = windows.copy()
    data["run"] = _run_label(data)
    data["edit"] = (data["first_edit"] + data["last_edit"]) / 2.0
    curve = None
    metrics: list[str] = []
    if curves is not None and len(curves):
        curve = curves[curves["metric"].isin(LONG_CURVE_METRICS)].copy()
        curve["run"] = _run_label(curve)
        curve["value"] = curve["value"] * 100.0
        metrics = [m for m in LONG_CURVE_METRICS if m in set(curve["metric"])]
    columns = [
        ("median_wall_ms", "ms per edit (window median)"),
        ("median_rss_mib", "RSS, MiB (window median)"),
    ]
    columns += [(m, LONG_CURVE_METRICS[m]) for m in metrics]
    runs = sorted(data["run"].unique())
    variants = order_variants(data["variant"].unique())
    palette = variant_palette(variants)
    fig, axes = plt.subplots(
        len(runs), len(columns), figsize=(3.0 * len(columns), 2.6 * len(runs) + 0.6), squeeze=False
    )
    for r, run in enumerate(runs):
        for c, (column, title) in enumerate(columns):
            ax = axes[r][c]
            if column in ("median_wall_ms", "median_rss_mib"):
                mine = data[data["run"] == run]
                x, y, errorbar, unit = "edit", column, _raw_interval, ""
                ax.set_xlabel("edit (window centre)")
            else:
                mine = curve[(curve["run"] == run) & (curve["metric"] == column)]
                x, y, errorbar, unit = "n_edits", "value", _t_interval, "%"
                ax.set_xlabel("edits made")
            if len(mine):
                sns.lineplot(
                    data=mine,
                    x=x,
                    y=y,
                    hue="variant",
                    hue_order=[v for v in variants if v in set(mine["variant"])],
                    palette=palette,
                    errorbar=errorbar,
                    err_kws={"alpha": 0.15},
                    marker="o",
                    markersize=3,
                    ax=ax,
                    legend=False,
                )
            if column in ("median_wall_ms", "median_rss_mib"):
                # From zero and without an offset: the question is whether the cost stays flat.
                ax.set_ylim(0, max(ax.get_ylim()[1], 1e-9) * 1.15)
                ax.ticklabel_format(axis="y", useOffset=False, style="plain")
            if r == 0:
                ax.set_title(title)
            ax.set_ylabel("\n".join([*run.split(" / "), unit]).strip() if c == 0 else unit)
    handles = [
        plt.Line2D([], [], color=palette[v], marker="o", linewidth=1.5, label=v) for v in variants
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 6),
        frameon=False,
        bbox_to_anchor=(0.5, -0.02),
    )
    title = "cost per edit and learning curves" if metrics else "cost per edit"
    fig.suptitle(f"The long stream: {title}", y=1.0)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    _save(fig, out)
