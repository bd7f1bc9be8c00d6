"""Render the README's study tables (Markdown) from the committed study CSVs.

The README quotes two tables per dataset: the metrics of every editor after the whole stream
(mean ± 95 % Student-t half-width over seeds, in %; KL in nats) and the paired claims table.
Both are printed from ``study/tables/metrics.csv`` and ``study/report/claims.csv``, so the
README's numbers can be regenerated and checked rather than typed:

    python study/readme_tables.py --dataset geofacts-counterfact
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hiedit import registry  # noqa: E402
from hiedit.reporting.tables import final_metrics, label, mean_interval  # noqa: E402

# (metric in metrics.csv, column heading); KL is in nats, the rest are fractions shown in %.
COLUMNS = [
    ("efficacy", "Eff."),
    ("generalization", "Gen."),
    ("specificity", "Spe."),
    ("specificity_agreement_correct", "Spe. agr. (correct)"),
    ("specificity_kl", "KL"),
    ("retention_efficacy", "Ret."),
]
# The unedited model agrees with itself everywhere and is at KL 0 by definition.
UNEDITED_BY_DEFINITION = {"specificity_agreement_correct": "100", "specificity_kl": "0"}


def cell(values: list[float], metric: str) -> str:
    """``mean ± h`` of one metric over runs (one run: the value alone; none: a dash)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    kl = metric == "specificity_kl"
    interval = mean_interval(values if kl else [100 * v for v in values])
    return interval.format(digits=3 if kl else 1)


def metrics_table(metrics: pd.DataFrame, dataset: str) -> str:
    """One row for the unedited model, then one per editor in the registry's order."""
    final = final_metrics(metrics[metrics["dataset"] == dataset])
    if final.empty:
        raise SystemExit(f"no metrics for dataset {dataset!r}")
    rows = ["| editor | runs | " + " | ".join(h for _, h in COLUMNS) + " |"]
    rows.append("|" + "---|" * (len(COLUMNS) + 2))
    # Every run records the unedited model's scores of the same stream; one variant's suffice.
    reference = final[final["variant"] == final["variant"].iloc[0]]
    unedited = [
        UNEDITED_BY_DEFINITION.get(m)
        or cell(reference.loc[reference["metric"] == f"unedited_{m}", "value"].tolist(), m)
        for m, _ in COLUMNS
    ]
    rows.append(
        f"| unedited model | {reference['seed'].nunique()} | " + " | ".join(unedited) + " |"
    )
    present = set(final["variant"])
    for variant in [v for v in registry.names() if v in present]:
        run = final[final["variant"] == variant]
        cells = [cell(run.loc[run["metric"] == m, "value"].tolist(), m) for m, _ in COLUMNS]
        rows.append(
            f"| {label(variant)} (`{variant}`) | {run['seed'].nunique()} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(rows)


def claims_table(claims: pd.DataFrame, dataset: str) -> str:
    """The report's claims table: difference (with its interval when seeds > 1) and verdict."""
    claims = claims[claims["Dataset"] == dataset]
    rows = ["| kind | claim | comparison | seeds | difference [95 % interval] | verdict |"]
    rows.append("|---|---|---|---|---|---|")
    for _, r in claims.iterrows():
        diff = "—" if pd.isna(r.Difference) else f"{r.Difference:+.2f}"
        if r.Seeds > 1 and pd.notna(r.Low) and pd.notna(r.High):
            diff += f" [{r.Low:+.2f}, {r.High:+.2f}]"
        unit = "" if r.Unit == "points" else f" ({r.Unit})"
        verdict = r.Verdict + (f" — {r.Detail}" if isinstance(r.Detail, str) and r.Detail else "")
        rows.append(
            f"| {r.Kind} | {r.Claim} | {r.Comparison}{unit} | {r.Seeds} | {diff} | {verdict} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--study", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    print(metrics_table(pd.read_csv(args.study / "tables" / "metrics.csv"), args.dataset))
    print()
    print(claims_table(pd.read_csv(args.study / "report" / "claims.csv"), args.dataset))


if __name__ == "__main__":
    main()
