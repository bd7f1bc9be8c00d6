"""Table 1 (main results) and Table 2 (ablations): our metrics over seeds beside the paper's.

Cells are percent. With several seeds a cell reads ``mean ± h`` where ``h`` is the half-width of
the two-sided 95 % Student-t interval of the mean over seeds; with one seed it is the value alone.
Only the final metrics (rows at a run's full stream length) enter the tables; smaller ``n_edits``
rows are learning-curve checkpoints.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hiedit import registry
from hiedit.errors import ConfigError
from hiedit.reporting.inputs import ReportInputError
from hiedit.reporting.paper import paper_has, paper_number

if TYPE_CHECKING:
    import pandas as pd

# The paper's four headline metrics; Retention is the efficacy of the first num_pre edits.
TABLE_METRICS: dict[str, str] = {
    "efficacy": "Efficacy",
    "generalization": "Generalization",
    "specificity": "Specificity",
    "retention_efficacy": "Retention",
}
UNEDITED = "unedited"
UNEDITED_PREFIX = "unedited_"
UNEDITED_DESCRIPTION = "the model before any edit"
UNEDITED_LABEL = "Unedited"
# Table 1's cost columns, from the per-edit files: per seed the median editor time of an edit and
# the peak resident memory of the evaluation process, then mean ± h over seeds.
TIME_COLUMN = "Time per edit (ms)"
MEMORY_COLUMN = "Peak RSS (MiB)"
# Which variant the ablation table compares against (its paired differences).
REFERENCE_VARIANT = "hiedit"
CONFIDENCE = 0.95
MISSING = "—"

# Two-sided 97.5 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (for a 95 % interval)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion around the normal quantile: error < 1e-4 beyond 30 df.
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and the half-width of its 95 % t-interval (0 when ``n`` is 1)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 2, signed: bool = False) -> str:
        sign = "+" if signed else ""
        if self.n < 2:
            return f"{self.mean:{sign}.{digits}f}"
        return f"{self.mean:{sign}.{digits}f} ± {self.half_width:.{digits}f}"


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean and 95 % Student-t half-width of ``values`` (one value: the value, half-width 0)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, 0.0, 1)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Interval(mean, t_quantile_975(n - 1) * math.sqrt(variance / n), n)


def final_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run (model, dataset, variant, seed) at its largest ``n_edits``."""
    keys = ["model", "dataset", "variant", "seed"]
    full = metrics.groupby(keys)["n_edits"].transform("max")
    return metrics[metrics["n_edits"] == full].reset_index(drop=True)


def per_seed_values(metrics: pd.DataFrame, model: str, dataset: str) -> pd.DataFrame:
    """Final values in percent for one model × dataset: columns variant, seed, metric, value.

    The unedited model's ``unedited_*`` metrics become the variant ``unedited``; they are the
    same records in every run of a seed, so the runs of a seed are averaged.
    """
    final = final_metrics(metrics)
    final = final[(final["model"] == model) & (final["dataset"] == dataset)]
    is_unedited = final["metric"].str.startswith(UNEDITED_PREFIX)
    edited = final[~is_unedited][["variant", "seed", "metric", "value"]]
    unedited = final[is_unedited].assign(
        metric=lambda f: f["metric"].str.removeprefix(UNEDITED_PREFIX), variant=UNEDITED
    )
    unedited = unedited.groupby(["variant", "seed", "metric"], as_index=False)["value"].mean()
    import pandas as pd

    values = pd.concat([edited, unedited], ignore_index=True)
    values["value"] = values["value"] * 100.0
    return values


def order_variants(variants: Sequence[str]) -> list[str]:
    """``variants`` in presentation order: the unedited model, then the registry's order."""

    def key(name: str) -> tuple[int, int, str]:
        return (-1, 0, name) if name == UNEDITED else registry.sort_key(name)

    return sorted(set(variants), key=key)


def describe(variant: str) -> str:
    """The registry's description of a variant (the unedited model has its own)."""
    if variant == UNEDITED:
        return UNEDITED_DESCRIPTION
    try:
        return registry.get(variant).description
    except ConfigError:
        return ""


def label(variant: str) -> str:
    """The registry's display name of a variant (the name itself for an unregistered one)."""
    if variant == UNEDITED:
        return UNEDITED_LABEL
    try:
        return registry.get(variant).label
    except ConfigError:
        return variant


def ablation_variants() -> list[str]:
    """Table 2's rows: the registry's variants marked as ablations of hiedit."""
    return [name for name in registry.names() if registry.get(name).ablation]


def _check_present(values: pd.DataFrame, model: str, dataset: str, source: str) -> None:
    if values.empty:
        raise ReportInputError(f"{source}: no final metrics for model {model}, dataset {dataset}")


def cost_cells(per_edit: pd.DataFrame, model: str, dataset: str) -> dict[str, dict[str, str]]:
    """Per variant of one model × dataset: :data:`TIME_COLUMN` and :data:`MEMORY_COLUMN` cells.

    ``per_edit`` is :func:`hiedit.reporting.inputs.read_per_edit`'s table. Per seed, the median
    of ``seconds`` (the editor's own time for an edit, scoring excluded) and the largest
    ``rss_mib`` (resident memory of the whole evaluation process after an edit); a cell is the
    mean over seeds ± the 95 % half-width. A run without ``rss_mib`` leaves the memory cell empty.
    """
    mine = per_edit[(per_edit["model"] == model) & (per_edit["dataset"] == dataset)]
    out: dict[str, dict[str, str]] = {}
    for variant, runs in mine.groupby("variant"):
        by_seed = runs.groupby("seed")
        times = (by_seed["seconds"].median() * 1000.0).tolist()
        cells = {TIME_COLUMN: mean_interval(times).format(digits=1), MEMORY_COLUMN: MISSING}
        if "rss_mib" in runs.columns:
            peaks = by_seed["rss_mib"].max().dropna().tolist()
            if peaks:
                cells[MEMORY_COLUMN] = mean_interval(peaks).format(digits=0)
        out[str(variant)] = cells
    return out


def main_table(
    metrics: pd.DataFrame,
    model: str,
    dataset: str,
    source: str = "metrics table",
    per_edit: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Table 1 for one model × dataset: one row per variant (the unedited model first), in the
    registry's order.

    Columns: ``Editor`` (the registry's label), ``Variant``, ``Description``, ``Seeds``, then per
    metric of :data:`TABLE_METRICS` our ``mean ± h`` and, where the paper publishes that metric
    for this model × dataset, a ``<Metric> (paper)`` column beside it; with ``per_edit`` (the
    runs' per-edit files) the time and memory columns of :func:`cost_cells`.
    """
    import pandas as pd

    values = per_seed_values(metrics, model, dataset)
    _check_present(values, model, dataset, source)
    costs = cost_cells(per_edit, model, dataset) if per_edit is not None else None
    rows = []
    for variant in order_variants(values["variant"].unique()):
        mine = values[values["variant"] == variant]
        row: dict[str, object] = {
            "Editor": label(variant),
            "Variant": variant,
            "Description": describe(variant),
            "Seeds": int(mine["seed"].nunique()),
        }
        for metric, name in TABLE_METRICS.items():
            cell = mine[mine["metric"] == metric]["value"]
            row[name] = mean_interval(cell.tolist()).format() if len(cell) else MISSING
            if paper_has(model, dataset, metric):
                published = paper_number(model, dataset, variant, metric)
                row[f"{name} (paper)"] = f"{published:.2f}" if published is not None else MISSING
        if costs is not None:
            row.update(costs.get(variant, {TIME_COLUMN: MISSING, MEMORY_COLUMN: MISSING}))
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_table(
    metrics: pd.DataFrame, model: str, dataset: str, source: str = "metrics table"
) -> pd.DataFrame:
    """Table 2 for one model × dataset: hiedit against its ablations (those that were run).

    Per metric: our ``mean ± h``, the paired difference to ``hiedit`` over the seeds both ran
    (``Δ <Metric>``, mean ± h), and the paper's number where it publishes one.
    """
    import pandas as pd

    values = per_seed_values(metrics, model, dataset)
    _check_present(values, model, dataset, source)
    present = [v for v in ablation_variants() if v in set(values["variant"])]
    if REFERENCE_VARIANT not in present:
        raise ReportInputError(
            f"{source}: no final metrics of variant {REFERENCE_VARIANT} for {model}, {dataset}"
        )
    reference = values[values["variant"] == REFERENCE_VARIANT]
    rows = []
    for variant in present:
        mine = values[values["variant"] == variant]
        row: dict[str, object] = {
            "Variant": variant,
            "Description": describe(variant),
            "Seeds": int(mine["seed"].nunique()),
        }
        for metric, name in TABLE_METRICS.items():
            cell = mine[mine["metric"] == metric][["seed", "value"]]
            row[name] = mean_interval(cell["value"].tolist()).format() if len(cell) else MISSING
            paired = cell.merge(
                reference[reference["metric"] == metric][["seed", "value"]],
                on="seed",
                suffixes=("", "_ref"),
            )
            if variant == REFERENCE_VARIANT or paired.empty:
                row[f"Δ {name}"] = MISSING
            else:
                diff = (paired["value"] - paired["value_ref"]).tolist()
                row[f"Δ {name}"] = mean_interval(diff).format(signed=True)
            if paper_has(model, dataset, metric):
                published = paper_number(model, dataset, variant, metric)
                row[f"{name} (paper)"] = f"{published:.2f}" if published is not None else MISSING
        rows.append(row)
    return pd.DataFrame(rows)


_HTML_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f2f2f2; }
caption { caption-side: top; font-weight: bold; padding-bottom: 0.5em; text-align: left; }
p.note { color: #555; font-size: 0.85em; max-width: 60em; }
"""


# Columns of words, aligned left in the HTML pages (numbers align right).
TEXT_COLUMNS = frozenset(
    {"Editor", "Variant", "Description", "Model", "Dataset", "Kind", "Claim", "Comparison"}
    | {"Verdict", "Detail"}
)


def table_html(table: pd.DataFrame, title: str, note: str = "") -> str:
    """A standalone HTML page holding ``table`` under ``title`` with an optional ``note``."""
    body = table.to_html(index=False, border=0, escape=True, na_rep=MISSING)
    left = [i + 1 for i, c in enumerate(table.columns) if str(c) in TEXT_COLUMNS]
    style = _HTML_STYLE + "".join(
        f"td:nth-child({i}), th:nth-child({i}) {{ text-align: left; }}\n" for i in left
    )
    # pandas writes <table class="dataframe">: the caption goes right after the opening tag.
    caption = f"<caption>{html.escape(title)}</caption>"
    body = re.sub(r"<table[^>]*>", lambda m: f"{m.group(0)}\n{caption}", body, count=1)
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head>\n"
        f"<body>\n{body}\n{note_html}\n</body></html>\n"
    )


TABLE_NOTE = (
    "Percent. Cells are the mean over seeds ± the half-width of its 95 % Student-t interval "
    "(a single seed shows its value). Retention is the efficacy of the first num_pre edits "
    "after the whole stream. Paper columns hold the published numbers where the paper gives "
    "them; — means none."
)
COST_NOTE = (
    " Time per edit: per seed the median editor time of an edit (scoring excluded), in ms; "
    "Peak RSS: per seed the largest resident memory of the evaluation process (model included), "
    "in MiB; both then averaged over seeds like the metrics."
)


def write_table(
    table: pd.DataFrame,
    csv_path: str | os.PathLike[str],
    html_path: str | os.PathLike[str] | None,
    title: str,
    note: str | None = None,
) -> None:
    """Write ``table`` as CSV and, if ``html_path`` is given, as an HTML page with ``note``
    (default :data:`TABLE_NOTE`, and :data:`COST_NOTE` when the table has the cost columns)."""
    from hiedit.atomic import atomic_path

    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    if html_path is not None:
        with atomic_path(html_path) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                if note is None:
                    note = TABLE_NOTE + (COST_NOTE if TIME_COLUMN in table.columns else "")
                handle.write(table_html(table, title, note))
