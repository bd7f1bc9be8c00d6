"""The report's figures: K sweep, learning curves, mask usage, per-edit time, training curves and
validation curves.

Each ``*_figure`` function takes tables from :mod:`hiedit.reporting.inputs`, draws with seaborn
and writes one PNG atomically. Metrics are shown in percent; error bars are the 95 % Student-t
interval over seeds (the tables' rule), absent with one seed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from hiedit import registry
from hiedit.reporting.inputs import (
    MODULE_SEPARATOR,
    PHASE_COLUMNS,
    RUN_COLUMNS,
    ReportInputError,
    ValidationLogs,
)
from hiedit.reporting.tables import (
    REFERENCE_VARIANT,
    TABLE_METRICS,
    UNEDITED,
    final_metrics,
    mean_interval,
    order_variants,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# Metrics measured at the learning-curve checkpoints (retention exists only after the stream).
CURVE_METRICS: dict[str, str] = {
    "efficacy": "Efficacy",
    "generalization": "Generalization",
    "specificity": "Specificity",
}
CURVE_PREFIX = "curve_"
ALL_RELATIONS = "all"
OTHER_RELATIONS = "other"
DENSE_LABEL = "rledit (dense, K = L)"
SWEEP_LABEL = "hiedit (K sweep)"
_LAYER = re.compile(r"layers\.(\d+)\.(.+)$")


def _setup() -> None:
    import matplotlib

    # Figures are written to files only; a non-interactive backend works without a display.
    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)


def _t_interval(values: pd.Series) -> tuple[float, float]:
    interval = mean_interval(values.tolist())
    # Metrics are percentages: an interval reaching past the bounds carries no extra information.
    return max(interval.low, 0.0), min(interval.high, 100.0)


def _save(fig: Figure, out: str | os.PathLike[str]) -> None:
    import matplotlib.pyplot as plt

    from hiedit.atomic import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def _label_rows(grid, y_label: str) -> None:
    """Name each row of a row × column grid on its first panel's y axis.

    Run names ("model / dataset") are too long for seaborn's rotated margin titles, which would
    push the rows apart.
    """
    for ax in grid.axes.flat:
        ax.set_title("")
    for col_name, ax in zip(grid.col_names, grid.axes[0], strict=True):
        ax.set_title(col_name)
    for row_name, axes in zip(grid.row_names, grid.axes, strict=True):
        # One line per part: a "model / dataset" name on one line overruns short panels.
        axes[0].set_ylabel("\n".join([*row_name.split(" / "), y_label]))


def _run_label(frame: pd.DataFrame) -> pd.Series:
    return frame["model"] + " / " + frame["dataset"]


UNEDITED_COLOUR = "#000000"


def variant_palette(variants: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per variant, the registry's, so a variant looks the same in every figure.

    K-sweep runs (and anything unregistered) share a sequential palette in K order.
    """
    import seaborn as sns
    from matplotlib.colors import to_rgb

    out: dict[str, tuple[float, float, float]] = {}
    extra = [v for v in order_variants(variants) if v not in registry.VARIANTS and v != UNEDITED]
    shades = sns.color_palette("crest", n_colors=max(len(extra), 1))
    for name in variants:
        if name == UNEDITED:
            out[name] = to_rgb(UNEDITED_COLOUR)
        elif name in registry.VARIANTS:
            out[name] = to_rgb(registry.VARIANTS[name].colour)
        else:
            out[name] = tuple(shades[extra.index(name)])
    return out


def module_label(name: str) -> str:
    """``model.layers.12.mlp.gate_proj`` -> ``layer 12 mlp.gate_proj`` (other names unchanged)."""
    match = _LAYER.search(name)
    return f"layer {match[1]} {match[2]}" if match else name


def _module_sort_key(name: str) -> tuple[str, int, str]:
    match = _LAYER.search(name)
    return (match[2], int(match[1]), name) if match else ("", -1, name)


def k_sweep_data(
    metrics: pd.DataFrame,
    default_k: Mapping[str, int],
    n_modules: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Final metrics (percent) against K: ``hiedit-k<K>`` runs, hiedit at its model's default K,
    and, when ``n_modules`` gives L, rledit at K = L.

    Columns: run, series, K, metric, seed, value.
    """
    final = final_metrics(metrics)
    final = final[final["metric"].isin(TABLE_METRICS)].copy()
    variant = final["variant"]
    suffix = variant.str.removeprefix(registry.K_SWEEP_PREFIX)
    sweep = variant.map(registry.is_sweep).astype(bool)
    final["K"] = suffix.where(sweep).astype("float64")
    final["series"] = SWEEP_LABEL
    is_default = variant == REFERENCE_VARIANT
    final.loc[is_default, "K"] = final.loc[is_default, "model"].map(default_k).astype("float64")
    if n_modules:
        dense = variant == "rledit"
        final.loc[dense, "K"] = final.loc[dense, "model"].map(n_modules).astype("float64")
        final.loc[dense, "series"] = DENSE_LABEL
    data = final.dropna(subset=["K"]).copy()
    if data.empty:
        raise ReportInputError("no hiedit or hiedit-k<K> final metrics to plot against K")
    data["K"] = data["K"].astype("int64")
    data["run"] = _run_label(data)
    data["metric"] = data["metric"].map(TABLE_METRICS)
    data["value"] = data["value"] * 100.0
    return data[["run", "series", "K", "metric", "seed", "value"]]


def k_sweep_figure(
    metrics: pd.DataFrame,
    out: str | os.PathLike[str],
    default_k: Mapping[str, int],
    n_modules: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Figure 1: each headline metric against K, one row of panels per model × dataset."""
    _setup()
    import seaborn as sns

    data = k_sweep_data(metrics, default_k, n_modules)
    colours = variant_palette([REFERENCE_VARIANT, "rledit"])
    palette = {SWEEP_LABEL: colours[REFERENCE_VARIANT], DENSE_LABEL: colours["rledit"]}
    series = [s for s in palette if s in set(data["series"])]
    grid = sns.relplot(
        data=data,
        x="K",
        y="value",
        hue="series",
        hue_order=series,
        palette={s: palette[s] for s in series},
        style="series",
        style_order=series,
        row="run",
        col="metric",
        col_order=list(TABLE_METRICS.values()),
        kind="line",
        markers=True,
        dashes=False,
        errorbar=_t_interval,
        err_style="bars",
        height=2.6,
        aspect=1.1,
        facet_kws={"sharey": False},
    )
    grid.set_axis_labels("K (modules edited per edit)", "%")
    _label_rows(grid, "%")
    for ax in grid.axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    grid.legend.set_title("")
    grid.figure.suptitle("Final metrics against K", y=1.02)
    _save(grid.figure, out)
    return data


def learning_curve_data(metrics: pd.DataFrame, include_sweep: bool = False) -> pd.DataFrame:
    """Curve metrics (percent) at every checkpoint; K-sweep runs only with ``include_sweep``.

    The evaluation writes checkpoint values as ``curve_<metric>`` rows (a fixed sample of the
    edits made so far), apart from the final metrics over the whole stream.
    """
    name = metrics["metric"].str.removeprefix(CURVE_PREFIX)
    data = metrics[metrics["metric"].str.startswith(CURVE_PREFIX) & name.isin(CURVE_METRICS)].copy()
    data["metric"] = name[data.index]
    if not include_sweep:
        data = data[~data["variant"].map(registry.is_sweep).astype(bool)]
    if data.empty:
        raise ReportInputError("no efficacy/generalization/specificity rows for learning curves")
    data["run"] = _run_label(data)
    data["metric"] = data["metric"].map(CURVE_METRICS)
    data["value"] = data["value"] * 100.0
    return data[["run", "variant", "seed", "n_edits", "metric", "value"]]


def learning_curves_figure(
    metrics: pd.DataFrame, out: str | os.PathLike[str], include_sweep: bool = False
) -> pd.DataFrame:
    """Figure 2: metrics of the edits made so far against the number of edits, per variant."""
    _setup()
    import seaborn as sns

    data = learning_curve_data(metrics, include_sweep)
    variants = order_variants(data["variant"].unique())
    grid = sns.relplot(
        data=data,
        x="n_edits",
        y="value",
        hue="variant",
        hue_order=variants,
        palette=variant_palette(variants),
        style="variant",
        style_order=variants,
        row="run",
        col="metric",
        col_order=list(CURVE_METRICS.values()),
        kind="line",
        markers=True,
        dashes=False,
        errorbar=_t_interval,
        err_kws={"alpha": 0.12},
        height=2.6,
        aspect=1.25,
        facet_kws={"sharey": False},
    )
    grid.set_axis_labels("edits made", "%")
    _label_rows(grid, "%")
    grid.figure.suptitle("Learning curves along the edit stream", y=1.02)
    _save(grid.figure, out)
    return data


def mask_usage(
    per_edit: pd.DataFrame,
    modules: Sequence[str] | None = None,
    max_relations: int | None = None,
) -> pd.DataFrame:
    """Fraction of edits in which each module was selected: modules × (``all``, relations…).

    Rows are ``modules`` (every candidate, so a never-selected one shows 0) or, if not given,
    the modules seen; columns are ``all`` then relations by decreasing number of edits. With
    ``max_relations`` the rarer relations are pooled into ``other``. Edits of every run in
    ``per_edit`` are pooled.
    """
    import pandas as pd

    if per_edit.empty:
        raise ReportInputError("no edits to count module usage over")
    chosen = per_edit["selected"].str.split(MODULE_SEPARATOR)
    chosen = chosen.map(lambda names: {n for n in names if n})
    seen = sorted(set().union(*chosen), key=_module_sort_key)
    rows = list(modules) if modules is not None else seen
    unknown = [m for m in seen if m not in rows]
    if unknown:
        raise ReportInputError(
            f"selected module(s) {', '.join(unknown)} are not among the candidates {', '.join(rows)}"
        )
    indicator = pd.DataFrame(
        {m: chosen.map(lambda names, m=m: m in names).astype(float) for m in rows},
        index=per_edit.index,
    )
    relation = per_edit["relation"].astype(str)
    counts = relation.value_counts()
    if max_relations is not None and len(counts) > max_relations:
        keep = set(counts.index[: max_relations - 1])
        relation = relation.where(relation.isin(keep), OTHER_RELATIONS)
        counts = relation.value_counts()
    order = [r for r in counts.index if r != OTHER_RELATIONS]
    if OTHER_RELATIONS in counts.index:
        order.append(OTHER_RELATIONS)
    by_relation = indicator.groupby(relation).mean().T[order]
    table = pd.concat([indicator.mean().rename(ALL_RELATIONS), by_relation], axis=1)
    table.index.name = "module"
    table.columns.name = "relation"
    table.attrs["n_edits"] = {ALL_RELATIONS: len(per_edit), **counts.to_dict()}
    return table


def mask_usage_figure(
    per_edit: pd.DataFrame,
    out: str | os.PathLike[str],
    modules: Sequence[str] | None = None,
    max_relations: int = 25,
    title: str = "",
) -> pd.DataFrame:
    """Figure 3: heatmap of :func:`mask_usage` (modules × relations), column labels with edit counts."""
    _setup()
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = mask_usage(per_edit, modules, max_relations)
    n_edits = table.attrs["n_edits"]
    n_rows, n_cols = table.shape
    annotate = n_rows * n_cols <= 400
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * n_cols + 3.0), max(3.0, 0.38 * n_rows + 1.8)))
    sns.heatmap(
        table,
        ax=ax,
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        annot=annotate,
        fmt=".2f",
        annot_kws={"fontsize": 7},
        linewidths=0.4,
        cbar_kws={"label": "fraction of edits"},
        yticklabels=[module_label(m) for m in table.index],
        xticklabels=[f"{c} (n={n_edits[c]})" for c in table.columns],
    )
    # Separate the pooled column from the per-relation ones.
    ax.axvline(1, color="white", linewidth=3)
    ax.set_xlabel("relation (number of edits)")
    ax.set_ylabel("candidate module")
    ax.tick_params(axis="x", labelrotation=60)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.set_title(title or "Module usage of the router")
    _save(fig, out)
    return table


def edit_time_figure(per_edit: pd.DataFrame, out: str | os.PathLike[str]) -> pd.DataFrame:
    """Figure 4: distribution of the per-edit wall time (ms) per variant, one panel per model × dataset.

    Returns the per variant summary (median, mean, 90th percentile in ms, number of edits) and,
    where the runs timed their phases, the median of each phase in ms (``capture_ms``, …).
    """
    _setup()
    import seaborn as sns

    data = per_edit.copy()
    data["run"] = _run_label(data)
    data["ms"] = data["seconds"] * 1000.0
    variants = order_variants(data["variant"].unique())
    runs = sorted(data["run"].unique())
    grid = sns.catplot(
        data=data,
        x="variant",
        y="ms",
        order=variants,
        hue="variant",
        hue_order=variants,
        palette=variant_palette(variants),
        col="run",
        col_order=runs,
        col_wrap=min(len(runs), 2),
        kind="box",
        showfliers=False,
        height=3.2,
        aspect=1.3,
        sharey=False,
        legend=False,
    )
    grid.set_titles("{col_name}")
    grid.set_axis_labels("", "ms per edit")
    positive = data["ms"][data["ms"] > 0]
    if len(positive) and positive.max() / positive.min() > 50:
        for ax in grid.axes.flat:
            ax.set_yscale("log")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    grid.figure.suptitle("Time per edit", y=1.02)
    _save(grid.figure, out)
    groups = data.groupby(["run", "variant"])
    summary = groups["ms"].agg(
        median="median", mean="mean", p90=lambda s: s.quantile(0.9), n_edits="size"
    )
    for column in (c for c in PHASE_COLUMNS if c in data.columns):
        summary[column.replace("_seconds", "_ms")] = groups[column].median() * 1000.0
    return summary.reset_index()


def training_curves_figure(
    logs: pd.DataFrame, out: str | os.PathLike[str], x_label: str = "step"
) -> pd.DataFrame:
    """Figure 5: every loss column of the training logs against the step, per variant.

    ``logs`` is :func:`hiedit.reporting.inputs.read_train_logs`'s long table. One row of panels
    per loss column, one column per model × dataset, one line per run (seeds are drawn
    separately: a few seeds give no useful interval); a panel whose positive values span more
    than two decades is drawn on a log scale.
    """
    _setup()
    import seaborn as sns

    data = logs.copy()
    data["run"] = _run_label(data)
    variants = order_variants(data["variant"].unique())
    grid = sns.relplot(
        data=data,
        x="step",
        y="value",
        hue="variant",
        hue_order=variants,
        palette=variant_palette(variants),
        row="loss",
        col="run",
        col_order=sorted(data["run"].unique()),
        units="seed",
        estimator=None,
        kind="line",
        alpha=0.85,
        height=2.6,
        aspect=1.3,
        facet_kws={"sharey": False, "sharex": False, "margin_titles": True},
    )
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set_axis_labels(x_label, "")
    for (loss, run), ax in grid.axes_dict.items():
        values = data[(data["loss"] == loss) & (data["run"] == run)]["value"]
        if len(values) and (values > 0).all() and values.max() / values.min() > 100:
            ax.set_yscale("log")
    grid.figure.suptitle("Editor training", y=1.02)
    _save(grid.figure, out)
    return data


# Validation metrics drawn against the trajectory (the score is what early stopping maximises).
VALIDATION_METRICS: dict[str, str] = {
    "score": "Validation score",
    "efficacy": "Efficacy",
    "specificity": "Specificity",
    "specificity_agreement_correct": "Specificity agreement (correct)",
    "retention_efficacy": "Retention",
}
SEARCH_TITLE = "tuned-step search"


def validation_summary(logs: ValidationLogs) -> pd.DataFrame:
    """Per run: number of validations, the best score (percent), where it was reached, the last.

    Trained editors' runs give the best ``trajectory``; the step-size search gives the best
    ``candidate``; runs whose file is empty are listed with 0 validations.
    """
    import pandas as pd

    rows = []
    for frame, x in ((logs.trajectories, "trajectory"), (logs.candidates, "candidate")):
        scores = frame[frame["metric"] == "score"]
        for (model, dataset, variant, seed), run in scores.groupby(list(RUN_COLUMNS)):
            run = run.sort_values(x)
            best = run.loc[run["value"].idxmax()]
            rows.append(
                {
                    "model": model,
                    "dataset": dataset,
                    "variant": variant,
                    "seed": int(seed),
                    "kind": x,
                    "n_validations": len(run),
                    "best_at": int(best[x]),
                    "best_score": 100.0 * float(best["value"]),
                    "first_score": 100.0 * float(run["value"].iloc[0]),
                    "last_score": 100.0 * float(run["value"].iloc[-1]),
                }
            )
    for identity in logs.empty:
        rows.append({**identity, "kind": "none", "n_validations": 0})
    summary = pd.DataFrame(
        rows,
        columns=[
            *RUN_COLUMNS,
            "kind",
            "n_validations",
            "best_at",
            "best_score",
            "first_score",
            "last_score",
        ],
    )
    order = {v: i for i, v in enumerate(order_variants(summary["variant"].unique()))}
    summary["_order"] = summary["variant"].map(order)
    summary = summary.sort_values(["model", "dataset", "_order", "seed"]).drop(columns="_order")
    return summary.reset_index(drop=True)


def _draw_message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def training_edits_per_trajectory(variant: str, setup_length: int) -> int:
    """How many edits one training trajectory of ``variant`` holds: the setup's trajectory
    length, or the variant's own (MEND and MALMEN train on single edits)."""
    return int(registry.get(variant).training_overrides.get("trajectory_length", setup_length))


def with_training_edits(trajectories: pd.DataFrame, setup_length: int) -> pd.DataFrame:
    """``trajectories`` (validation rows with ``variant`` and ``trajectory``) with an ``edits``
    column: the training edits seen at each validation."""
    per = trajectories["variant"].map(lambda v: training_edits_per_trajectory(v, setup_length))
    return trajectories.assign(edits=trajectories["trajectory"] * per)


def validation_curves_figure(
    logs: ValidationLogs, out: str | os.PathLike[str], trajectory_length: int | None = None
) -> pd.DataFrame:
    """Figure 7: the validation metrics (percent) against training progress, per variant.

    One row of panels per model × dataset, one column per metric of :data:`VALIDATION_METRICS`;
    lines are means over seeds with their 95 % t-interval. With the setup's
    ``trajectory_length`` the x axis counts training edits (trajectories × each variant's edits
    per trajectory, so single-edit and trajectory training share one axis); without it,
    trajectories. Where the step-size search ran, a last column shows its candidates' scores in
    search order (one marker per candidate, coloured by search phase, a line for each seed's best
    so far). Returns :func:`validation_summary`.
    """
    _setup()
    import matplotlib.pyplot as plt
    import seaborn as sns

    trajectories = logs.trajectories[logs.trajectories["metric"].isin(VALIDATION_METRICS)].copy()
    trajectories["value"] = trajectories["value"] * 100.0
    x, x_label = "trajectory", "trajectories trained"
    if trajectory_length is not None:
        trajectories = with_training_edits(trajectories, trajectory_length)
        x, x_label = "edits", "training edits seen"
    candidates = logs.candidates[logs.candidates["metric"] == "score"].copy()
    candidates["value"] = candidates["value"] * 100.0
    # A phase reads "shared <step size>" or "pass <n> module <m>": colour by its kind only.
    candidates["phase"] = candidates["phase"].astype(str).str.split().str[0]
    runs = sorted(set(_run_label(trajectories)) | set(_run_label(candidates)))
    summary = validation_summary(logs)
    if not runs:
        fig, ax = plt.subplots(figsize=(6, 2))
        names = ", ".join(f"{e['variant']} seed {e['seed']}" for e in logs.empty) or "no run"
        _draw_message(ax, f"No validation was logged (empty validation files: {names}).")
        _save(fig, out)
        return summary
    trajectories["run"] = _run_label(trajectories)
    candidates["run"] = _run_label(candidates)
    columns = list(VALIDATION_METRICS) + ([SEARCH_TITLE] if len(candidates) else [])
    variants = order_variants(trajectories["variant"].unique())
    palette = variant_palette(variants)
    search_colour = registry.VARIANTS["tuned-step"].colour
    fig, axes = plt.subplots(
        len(runs),
        len(columns),
        figsize=(2.9 * len(columns), 2.5 * len(runs) + 0.6),
        squeeze=False,
    )
    for r, run in enumerate(runs):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            if column == SEARCH_TITLE:
                mine = candidates[candidates["run"] == run]
                if mine.empty:
                    _draw_message(ax, "no step-size search")
                    continue
                sns.scatterplot(
                    data=mine, x="candidate", y="value", hue="phase", s=18, ax=ax, legend=True
                )
                for _, seed_run in mine.groupby("seed"):
                    seed_run = seed_run.sort_values("candidate")
                    best = seed_run["value"].cummax()
                    ax.plot(seed_run["candidate"], best, color=search_colour, linewidth=1.0)
                ax.set_xlabel("candidate")
                ax.legend(title="phase", fontsize=7, title_fontsize=7)
                if r == 0:
                    ax.set_title(f"{SEARCH_TITLE}: score")
            else:
                mine = trajectories[
                    (trajectories["run"] == run) & (trajectories["metric"] == column)
                ]
                if mine.empty:
                    _draw_message(ax, "not logged")
                else:
                    sns.lineplot(
                        data=mine,
                        x=x,
                        y="value",
                        hue="variant",
                        hue_order=[v for v in variants if v in set(mine["variant"])],
                        palette=palette,
                        errorbar=_t_interval,
                        err_kws={"alpha": 0.15},
                        marker="o",
                        markersize=4,
                        ax=ax,
                        legend=False,
                    )
                    ax.set_xlabel(x_label)
                if r == 0:
                    ax.set_title(VALIDATION_METRICS[column])
            ax.set_ylabel("\n".join([*run.split(" / "), "%"]) if c == 0 else "")
    handles = [
        plt.Line2D([], [], color=palette[v], marker="o", linewidth=1.5, label=v) for v in variants
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 6),
            frameon=False,
            bbox_to_anchor=(0.5, -0.02),
        )
    fig.suptitle("Validation during editor training", y=1.0)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    _save(fig, out)
    return summary
