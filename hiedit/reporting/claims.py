"""The claims table: each claim of the paper, and each target of the study, tested on our runs.

A row compares two editors on one metric for one model × dataset: the difference A − B for every
seed both ran (paired, so that what a seed shares, its stream and its initialisation, cancels),
the mean of those differences and its 95 % Student-t interval (:func:`tables.mean_interval`), and
a verdict stated whichever way it falls:

* ``holds``: the interval lies above the row's margin (0 unless the claim states one);
* ``contradicted``: the interval lies below the margin (for a margin above 0 the detail says
  whether the difference is at least positive);
* ``inconclusive``: the interval contains the margin; ``inconclusive (one seed)`` with a single
  common seed, where no interval exists;
* ``not run``: an editor the row needs has no result for this model × dataset.

Rates are compared in percentage points. The router claim compares two statistics of the
selected modules in ``per_edit.csv`` instead: the entropy of module usage over the stream,
normalised by log L (1 = every module used equally often), and the number of distinct module sets
the router chose. With a hard top-K the router always edits K modules, so "drifting toward dense
behaviour" can only show as less selective, more uniform routing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hiedit import registry
from hiedit.reporting.inputs import MODULE_SEPARATOR, ReportInputError
from hiedit.reporting.tables import (
    UNEDITED,
    Interval,
    final_metrics,
    mean_interval,
    per_seed_values,
)

if TYPE_CHECKING:
    import pandas as pd

HOLDS = "holds"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
ONE_SEED = "inconclusive (one seed)"
NOT_RUN = "not run"

CLAIM = "claim"
TARGET = "target"

# Statistics of the router's choices, computed from per_edit.csv (not in the metrics table).
ROUTER_ENTROPY = "router_entropy"
ROUTER_SETS = "router_sets"

METRIC_NAMES: dict[str, str] = {
    "efficacy": "Efficacy",
    "generalization": "Generalization",
    "specificity": "Specificity",
    "specificity_agreement_correct": "Specificity agreement (correct)",
    "retention_efficacy": "Retention",
    ROUTER_ENTROPY: "normalised entropy of module usage",
    ROUTER_SETS: "distinct module sets",
}
# Unit of a row's difference and the digits it is shown with.
UNITS: dict[str, tuple[str, int]] = {
    ROUTER_ENTROPY: ("fraction", 3),
    ROUTER_SETS: ("count", 1),
}
POINTS = ("points", 2)

# The study's targets (issue "embedded study"): on ZsRE-format data hiedit's efficacy and retention
# reach these levels, its specificity stays within SPECIFICITY_TOLERANCE of the unedited model's,
# and on every dataset it beats the tuned step size by STEP_MARGIN efficacy points.
EFFICACY_TARGET = 60.0
RETENTION_TARGET = 50.0
SPECIFICITY_TOLERANCE = 2.0
STEP_MARGIN = 5.0
SWEEP_METRICS = ("efficacy", "retention_efficacy")

CLAIM_COLUMNS = (
    "Model",
    "Dataset",
    "Kind",
    "Claim",
    "Comparison",
    "Unit",
    "Margin",
    "Seeds",
    "Difference",
    "Low",
    "High",
    "Verdict",
    "Detail",
)


@dataclass(frozen=True)
class Check:
    """One comparison: ``a − b`` on ``metric`` (``b`` None: ``a − threshold``).

    ``within``: the claim is ``|a − b| <= margin`` instead of ``a − b > margin``.
    """

    kind: str
    claim: str
    a: str
    b: str | None
    metric: str
    margin: float = 0.0
    within: bool = False
    threshold: float | None = None

    def comparison(self) -> str:
        name = METRIC_NAMES.get(self.metric, self.metric)
        if self.b is None:
            return f"{self.a} {name} − {self.threshold:g}"
        text = f"{self.a} − {self.b} on {name}"
        if self.within:
            return f"|{text}| ≤ {self.margin:g}"
        return f"{text} (margin {self.margin:+g})" if self.margin else text


def unit(metric: str) -> tuple[str, int]:
    return UNITS.get(metric, POINTS)


def verdict(interval: Interval, margin: float = 0.0, within: bool = False) -> tuple[str, str]:
    """The verdict on an interval of differences and a detail that explains a near miss."""
    if interval.n < 2:
        return ONE_SEED, ""
    low, high = interval.low, interval.high
    if within:
        if -margin <= low and high <= margin:
            return HOLDS, ""
        if high < -margin or low > margin:
            return CONTRADICTED, ""
        return INCONCLUSIVE, ""
    if low > margin:
        return HOLDS, ""
    if high < margin:
        detail = f"above 0 but below the {margin:+g} margin" if margin > 0 and low > 0 else ""
        return CONTRADICTED, detail
    detail = f"above 0; the {margin:+g} margin lies inside the interval" if low > 0 else ""
    return INCONCLUSIVE, detail


# --- the router's selectivity ---------------------------------------------------------------


def router_stats(per_edit: pd.DataFrame, n_modules: Mapping[str, int]) -> pd.DataFrame:
    """Per run of ``per_edit``: :data:`ROUTER_ENTROPY` and :data:`ROUTER_SETS`.

    ``per_edit`` is :func:`hiedit.reporting.inputs.read_per_edit`'s table; ``n_modules`` gives
    each model's number of candidate modules L (the entropy is divided by log L). Columns: model,
    dataset, variant, seed, metric, value.
    """
    import pandas as pd

    rows = []
    for (model, dataset, variant, seed), run in per_edit.groupby(
        ["model", "dataset", "variant", "seed"]
    ):
        if model not in n_modules:
            raise ReportInputError(
                f"no number of candidate modules for model {model} (give MODEL=L with --n-modules)"
            )
        n = int(n_modules[model])
        chosen = [
            frozenset(name for name in text.split(MODULE_SEPARATOR) if name)
            for text in run["selected"]
        ]
        counts: dict[str, int] = {}
        for names in chosen:
            for name in names:
                counts[name] = counts.get(name, 0) + 1
        if len(counts) > n:
            raise ReportInputError(
                f"run {model}/{dataset}/{variant}/seed{seed}: {len(counts)} distinct modules "
                f"selected, more than the {n} candidates of {model}"
            )
        total = sum(counts.values())
        identity = {"model": model, "dataset": dataset, "variant": variant, "seed": int(seed)}
        if total and n > 1:
            entropy = -sum(c / total * math.log(c / total) for c in counts.values())
            rows.append({**identity, "metric": ROUTER_ENTROPY, "value": entropy / math.log(n)})
        rows.append({**identity, "metric": ROUTER_SETS, "value": float(len(set(chosen)))})
    return pd.DataFrame(rows, columns=["model", "dataset", "variant", "seed", "metric", "value"])


# --- the claims -----------------------------------------------------------------------------


def checks(k: int | None, n_modules: int | None, zsre: bool) -> list[Check]:
    """The paper's claims and the study's targets for one model × dataset (K and L if known)."""
    share = f"K = {k} of L = {n_modules}" if k and n_modules else "K of L"
    denser = "without the intrinsic reward the router drifts toward dense behaviour"
    step = "training learns more than a step size"
    out = [
        Check(
            CLAIM,
            f"HiEdit ≥ RLEdit on specificity while editing {share} modules",
            "hiedit",
            "rledit",
            "specificity",
        ),
        Check(
            CLAIM,
            f"HiEdit ≥ RLEdit on specificity while editing {share} modules",
            "hiedit",
            "rledit",
            "specificity_agreement_correct",
        ),
        Check(
            CLAIM,
            f"HiEdit ≥ RLEdit on retention while editing {share} modules",
            "hiedit",
            "rledit",
            "retention_efficacy",
        ),
        Check(
            CLAIM,
            "learned mask > random mask on retention",
            "hiedit",
            "hiedit-rand",
            "retention_efficacy",
        ),
        Check(
            CLAIM,
            "random mask > static K on retention",
            "hiedit-rand",
            "static-k",
            "retention_efficacy",
        ),
        Check(CLAIM, denser, "no-intrinsic", "hiedit", ROUTER_ENTROPY),
        Check(CLAIM, denser, "no-intrinsic", "hiedit", ROUTER_SETS),
    ]
    for other in ("tuned-step", "step-only"):
        out.append(Check(CLAIM, step, "hiedit", other, "efficacy", margin=STEP_MARGIN))
        out.append(Check(CLAIM, step, "hiedit", other, "specificity_agreement_correct"))
    if zsre:
        out += [
            Check(
                TARGET,
                f"ZsRE: hiedit efficacy ≥ {EFFICACY_TARGET:g}",
                "hiedit",
                None,
                "efficacy",
                threshold=EFFICACY_TARGET,
            ),
            Check(
                TARGET,
                f"ZsRE: hiedit retention ≥ {RETENTION_TARGET:g}",
                "hiedit",
                None,
                "retention_efficacy",
                threshold=RETENTION_TARGET,
            ),
            Check(
                TARGET,
                f"ZsRE: hiedit specificity within {SPECIFICITY_TOLERANCE:g} points "
                "of the unedited model",
                "hiedit",
                UNEDITED,
                "specificity",
                margin=SPECIFICITY_TOLERANCE,
                within=True,
            ),
        ]
    return out


def _row(model: str, dataset: str, check: Check, values: pd.DataFrame) -> dict[str, object]:
    name, _ = unit(check.metric)
    row: dict[str, object] = {
        "Model": model,
        "Dataset": dataset,
        "Kind": check.kind,
        "Claim": check.claim,
        "Comparison": check.comparison(),
        "Unit": name,
        "Margin": check.margin if check.b is not None else check.threshold,
        "Seeds": 0,
        "Difference": math.nan,
        "Low": math.nan,
        "High": math.nan,
        "Verdict": NOT_RUN,
        "Detail": "",
    }
    sides = [check.a] if check.b is None else [check.a, check.b]
    series = {}
    for variant in sides:
        mine = values[(values["variant"] == variant) & (values["metric"] == check.metric)]
        series[variant] = mine.set_index("seed")["value"]
    absent = [v for v in sides if v not in set(values["variant"])]
    if absent:
        row["Detail"] = ", ".join(
            f"no unedited_{check.metric} in the metrics" if v == UNEDITED else f"{v} not run"
            for v in absent
        )
        return row
    missing = [v for v in sides if series[v].empty]
    if missing:
        what = "in its per-edit file" if check.metric in UNITS else "in the metrics"
        name = METRIC_NAMES.get(check.metric, check.metric)
        row["Detail"] = f"no {name} of {', '.join(missing)} {what}"
        return row
    if check.b is None:
        diffs = (series[check.a] - check.threshold).tolist()
    else:
        common = series[check.a].index.intersection(series[check.b].index)
        if common.empty:
            row["Detail"] = f"{check.a} and {check.b} share no seed"
            return row
        diffs = (series[check.a][common] - series[check.b][common]).tolist()
    interval = mean_interval(diffs)
    result, detail = verdict(interval, 0.0 if check.b is None else check.margin, check.within)
    row.update(
        Seeds=interval.n,
        Difference=interval.mean,
        Low=interval.low,
        High=interval.high,
        Verdict=result,
        Detail=detail,
    )
    return row


def _combined_step_target(model: str, dataset: str, values: pd.DataFrame) -> dict[str, object]:
    """The study's target "hiedit ≥ tuned-step + 5 efficacy at equal or better specificity
    agreement": holds when both parts hold, contradicted when either is, else inconclusive."""
    claim = (
        f"hiedit ≥ tuned-step + {STEP_MARGIN:g} efficacy at equal or better specificity "
        "agreement (correct)"
    )
    efficacy = _row(
        model,
        dataset,
        Check(TARGET, claim, "hiedit", "tuned-step", "efficacy", margin=STEP_MARGIN),
        values,
    )
    agreement = _row(
        model,
        dataset,
        Check(TARGET, claim, "hiedit", "tuned-step", "specificity_agreement_correct"),
        values,
    )
    verdicts = {efficacy["Verdict"], agreement["Verdict"]}
    if NOT_RUN in verdicts:
        combined = NOT_RUN
    elif verdicts == {HOLDS}:
        combined = HOLDS
    elif CONTRADICTED in verdicts:
        combined = CONTRADICTED
    elif ONE_SEED in verdicts:
        combined = ONE_SEED
    else:
        combined = INCONCLUSIVE

    def part(name: str, row: Mapping[str, object]) -> str:
        if row["Verdict"] == NOT_RUN:
            return f"{name}: {row['Detail']}"
        note = f" ({row['Detail']})" if row["Detail"] else ""
        return f"{name}: {_format_difference(row)}, {row['Verdict']}{note}"

    detail = "; ".join(
        (part("efficacy", efficacy), part("specificity agreement (correct)", agreement))
    )
    return {
        **efficacy,
        "Comparison": "hiedit − tuned-step on Efficacy (margin +5) and on "
        "Specificity agreement (correct)",
        "Verdict": combined,
        "Detail": detail,
    }


def _k_of(variant: str, k: int | None, n_modules: int | None) -> int | None:
    if registry.is_sweep(variant):
        return int(variant.removeprefix(registry.K_SWEEP_PREFIX))
    if variant == "hiedit":
        return k
    if variant == "rledit":
        return n_modules
    return None


def sweep_rows(
    model: str, dataset: str, values: pd.DataFrame, k: int | None, n_modules: int | None
) -> list[dict[str, object]]:
    """The K sweep's shape: per metric of :data:`SWEEP_METRICS`, where the maximum over K lies and
    whether K = L/2 is within the 95 % interval of the best K.

    K values come from the ``hiedit-k<K>`` runs, ``hiedit`` at the model's K and ``rledit`` at
    K = L (``hiedit`` wins where a sweep run has the same K). The difference is K = L/2 − best,
    paired by seed.
    """
    half = n_modules // 2 if n_modules else None
    half_name = "⌊L/2⌋" if n_modules and n_modules % 2 else "L/2"
    at = f"K = {half_name}" + (f" (= {half})" if half else "")
    claim = f"the K sweep: {at} is as good as the best K"
    rows = []
    for metric in SWEEP_METRICS:
        name = METRIC_NAMES[metric]
        row: dict[str, object] = {
            "Model": model,
            "Dataset": dataset,
            "Kind": CLAIM,
            "Claim": claim,
            "Comparison": f"K = {half_name} − best K on {name}",
            "Unit": POINTS[0],
            "Margin": 0.0,
            "Seeds": 0,
            "Difference": math.nan,
            "Low": math.nan,
            "High": math.nan,
            "Verdict": NOT_RUN,
            "Detail": "",
        }
        rows.append(row)
        by_k: dict[int, pd.Series] = {}
        order = sorted(set(values["variant"]), key=lambda v: (v != "hiedit", registry.sort_key(v)))
        for variant in order:
            at = _k_of(variant, k, n_modules)
            mine = values[(values["variant"] == variant) & (values["metric"] == metric)]
            if at is None or mine.empty or at in by_k:
                continue
            by_k[at] = mine.set_index("seed")["value"]
        if len(by_k) < 2:
            row["Detail"] = "fewer than two values of K were run"
            continue
        means = {at: mean_interval(by_k[at].tolist()) for at in sorted(by_k)}
        best = max(means, key=lambda at: means[at].mean)
        shape = ", ".join(f"{at}: {means[at].mean:.1f}" for at in means)
        row["Detail"] = f"mean by K: {shape}; maximum at K = {best}"
        if half is None:
            row["Detail"] += "; L unknown"
            continue
        if half not in by_k:
            row["Detail"] += f"; K = {half} not run"
            continue
        common = by_k[half].index.intersection(by_k[best].index)
        if common.empty:
            row["Detail"] += f"; K = {half} and K = {best} share no seed"
            continue
        diff = mean_interval((by_k[half][common] - by_k[best][common]).tolist())
        row.update(
            Seeds=diff.n,
            Difference=diff.mean,
            Low=diff.low,
            High=diff.high,
        )
        best_interval = means[best]
        if best_interval.n < 2 or means[half].n < 2:
            row["Verdict"] = ONE_SEED
        elif best == half or means[half].mean >= best_interval.low:
            row["Verdict"] = HOLDS
            if best != half:
                row["Detail"] += f"; K = {half} lies within the 95 % interval of K = {best}"
        else:
            row["Verdict"] = CONTRADICTED
            row["Detail"] += f"; K = {half} lies below the 95 % interval of K = {best}"
    return rows


def claims_table(
    metrics: pd.DataFrame,
    per_edit: pd.DataFrame | None = None,
    default_k: Mapping[str, int] | None = None,
    n_modules: Mapping[str, int] | None = None,
    zsre_datasets: Sequence[str] = (),
    router: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every claim and target for every model × dataset of ``metrics``: :data:`CLAIM_COLUMNS`.

    ``per_edit``: the per-edit files of (at least) hiedit and no-intrinsic, for the router claim;
    ``router``: their statistics already computed (:func:`router_stats`' table), for runs whose
    per-edit files are not at hand (a run in both counts once, from ``per_edit``);
    ``default_k`` / ``n_modules``: each model's K and L; ``zsre_datasets``: the datasets in the
    ZsRE format, where the study's efficacy, retention and specificity targets apply.
    """
    import pandas as pd

    default_k = default_k or {}
    n_modules = n_modules or {}
    final = final_metrics(metrics)
    if final.empty:
        raise ReportInputError("the metrics table has no rows")
    parts = [router] if router is not None else []
    if per_edit is not None:
        parts.append(router_stats(per_edit, n_modules))
    if parts:
        keys = ["model", "dataset", "variant", "seed", "metric"]
        router = pd.concat(parts, ignore_index=True).drop_duplicates(keys, keep="last")
    rows = []
    runs = final[["model", "dataset"]].drop_duplicates().sort_values(["model", "dataset"])
    for model, dataset in runs.itertuples(index=False):
        values = per_seed_values(metrics, model, dataset)
        if router is not None:
            mine = router[(router["model"] == model) & (router["dataset"] == dataset)]
            values = pd.concat([values, mine[["variant", "seed", "metric", "value"]]])
        k, n = default_k.get(model), n_modules.get(model)
        for check in checks(k, n, dataset in zsre_datasets):
            rows.append(_row(model, dataset, check, values))
        rows.extend(sweep_rows(model, dataset, values, k, n))
        rows.append(_combined_step_target(model, dataset, values))
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def _format_difference(row: Mapping[str, object]) -> str:
    if row["Verdict"] == NOT_RUN or math.isnan(float(row["Difference"])):
        return "—"
    digits = 3 if row["Unit"] == "fraction" else (1 if row["Unit"] == "count" else 2)
    text = f"{float(row['Difference']):+.{digits}f}"
    if int(row["Seeds"]) < 2:
        return text
    return f"{text} [{float(row['Low']):+.{digits}f}, {float(row['High']):+.{digits}f}]"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table for reading: the difference and its interval in one cell."""
    out = table[["Model", "Dataset", "Kind", "Claim", "Comparison", "Seeds"]].copy()
    out["Difference (95 % interval)"] = [_format_difference(r) for _, r in table.iterrows()]
    out["Unit"] = table["Unit"]
    out["Verdict"] = table["Verdict"]
    out["Detail"] = table["Detail"]
    return out


CLAIMS_NOTE = (
    "Each row: the difference A − B per seed both editors ran (paired), its mean and 95 % "
    "Student-t interval. Verdict: holds when the interval lies above the margin (0 unless the "
    "comparison names one), contradicted when below it, inconclusive when it contains it or when "
    "only one seed was run; not run when an editor has no result. Rates are in percentage "
    "points. The router rows use per_edit.csv: the entropy of module usage over the stream "
    "divided by log L, and the number of distinct module sets (higher: less selective). The "
    "K-sweep rows compare K = L/2 with the best K: it holds when K = L/2 is the best or its mean "
    "lies within the best K's 95 % interval. Target rows are the study's targets."
)


def write_claims(
    table: pd.DataFrame,
    csv_path: str | os.PathLike[str],
    html_path: str | os.PathLike[str] | None,
    title: str = "Claims of the paper, tested",
) -> None:
    """The claims table as CSV (numbers) and, with ``html_path``, as an HTML page."""
    from hiedit.atomic import atomic_path
    from hiedit.reporting.tables import table_html

    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    if html_path is not None:
        with atomic_path(html_path) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(table_html(display_table(table), title, CLAIMS_NOTE))
