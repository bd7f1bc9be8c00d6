"""The claims table on hand-made metrics whose verdicts are known (test inputs, not results)."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from hiedit.cli import main
from hiedit.reporting.claims import (
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    NOT_RUN,
    ONE_SEED,
    ROUTER_ENTROPY,
    ROUTER_SETS,
    claims_table,
    router_stats,
    verdict,
)
from hiedit.reporting.inputs import read_per_edit
from hiedit.reporting.tables import Interval, mean_interval

MODEL, DATASET = "tiny-llama", "geofacts-zsre"
MODULES = [f"model.layers.{i}.mlp.up_proj" for i in range(4)]
COLUMNS = ["model", "dataset", "variant", "seed", "n_edits", "metric", "value"]


def metrics_from(values: dict[str, dict[str, list[float]]], dataset=DATASET, n_edits=20):
    """A tidy metrics table: ``values[variant][metric]`` lists the value of seeds 0, 1, …; a
    smaller ``n_edits`` checkpoint row per metric checks that only final rows count."""
    rows = []
    for variant, metrics in values.items():
        for metric, per_seed in metrics.items():
            for seed, value in enumerate(per_seed):
                rows.append((MODEL, dataset, variant, seed, n_edits, metric, value))
                rows.append((MODEL, dataset, variant, seed, n_edits // 2, metric, 1.0 - value))
    return pd.DataFrame(rows, columns=COLUMNS)


def row(table, comparison_start: str, metric_name: str | None = None) -> pd.Series:
    """The one row whose comparison is ``comparison_start`` or starts with it (and names
    ``metric_name``)."""
    mine = table[table["Comparison"] == comparison_start]
    if mine.empty:
        mine = table[table["Comparison"].str.startswith(comparison_start)]
    if metric_name is not None:
        mine = mine[mine["Comparison"].str.contains(metric_name, regex=False)]
    assert len(mine) == 1, (comparison_start, metric_name, list(table["Comparison"]))
    return mine.iloc[0]


def test_verdict_rule_at_the_margin():
    assert verdict(Interval(3.0, 1.0, 3)) == (HOLDS, "")
    assert verdict(Interval(-3.0, 1.0, 3)) == (CONTRADICTED, "")
    assert verdict(Interval(0.5, 1.0, 3)) == (INCONCLUSIVE, "")
    assert verdict(Interval(3.0, 0.0, 1)) == (ONE_SEED, "")
    # With a +5 margin a positive difference below it is contradicted, and says so.
    result, detail = verdict(Interval(3.0, 1.0, 3), margin=5.0)
    assert result == CONTRADICTED and "above 0 but below the +5 margin" in detail
    assert verdict(Interval(7.0, 1.0, 3), margin=5.0)[0] == HOLDS
    assert verdict(Interval(5.0, 1.0, 3), margin=5.0)[0] == INCONCLUSIVE
    # Within ±2: the interval must lie inside the band.
    assert verdict(Interval(0.5, 1.0, 3), margin=2.0, within=True)[0] == HOLDS
    assert verdict(Interval(-4.0, 1.0, 3), margin=2.0, within=True)[0] == CONTRADICTED
    assert verdict(Interval(-1.5, 1.0, 3), margin=2.0, within=True)[0] == INCONCLUSIVE


def test_paired_differences_and_verdicts_on_known_values():
    metrics = metrics_from(
        {
            "hiedit": {
                "specificity": [0.50, 0.52, 0.51],
                "specificity_agreement_correct": [0.90, 0.91, 0.92],
                "retention_efficacy": [0.60, 0.70, 0.50],
                "efficacy": [0.80, 0.81, 0.82],
            },
            "rledit": {
                "specificity": [0.40, 0.41, 0.40],
                "specificity_agreement_correct": [0.95, 0.96, 0.97],
                "retention_efficacy": [0.55, 0.72, 0.52],
                "efficacy": [0.80, 0.80, 0.80],
            },
            "tuned-step": {
                "efficacy": [0.70, 0.70, 0.70],
                "specificity_agreement_correct": [0.90, 0.91, 0.92],
            },
        }
    )
    table = claims_table(metrics, default_k={MODEL: 2}, n_modules={MODEL: 4})
    spec = row(table, "hiedit − rledit on Specificity")
    expected = mean_interval([10.0, 11.0, 11.0])
    assert spec["Seeds"] == 3
    assert spec["Difference"] == pytest.approx(expected.mean)
    assert spec["Low"] == pytest.approx(expected.low, abs=1e-4)
    assert spec["Verdict"] == HOLDS
    assert "K = 2 of L = 4" in spec["Claim"]
    agreement = row(table, "hiedit − rledit", "agreement")
    assert agreement["Difference"] == pytest.approx(-5.0)
    assert agreement["Verdict"] == CONTRADICTED
    assert row(table, "hiedit − rledit", "Retention")["Verdict"] == INCONCLUSIVE
    # Variants that were not run.
    random_mask = row(table, "hiedit − hiedit-rand")
    assert random_mask["Verdict"] == NOT_RUN and random_mask["Detail"] == "hiedit-rand not run"
    assert row(table, "hiedit-rand − static-k")["Verdict"] == NOT_RUN
    assert row(table, "hiedit − step-only", "Efficacy")["Verdict"] == NOT_RUN
    # +10 ± 1 points over tuned-step: above the +5 margin.
    step = row(table, "hiedit − tuned-step on Efficacy (margin +5)")
    assert step["Difference"] == pytest.approx(11.0)
    assert step["Verdict"] == HOLDS
    # The combined target: efficacy holds, agreement equal on every seed (an interval of width 0
    # at 0 contains the margin): inconclusive, and the detail says why.
    combined = table[table["Comparison"].str.contains(" and on ")].iloc[0]
    assert combined["Kind"] == "target"
    assert combined["Verdict"] == INCONCLUSIVE
    assert "efficacy: +11.00 [" in combined["Detail"]
    assert (
        "specificity agreement (correct): +0.00 [+0.00, +0.00], inconclusive"
        in (combined["Detail"])
    )
    # Only final rows count: the checkpoint rows (1 − value) would reverse every sign.
    assert (table["Difference"].dropna().abs() < 60).all()


def test_one_seed_says_so_and_zsre_targets_use_the_thresholds():
    metrics = metrics_from(
        {
            "hiedit": {"efficacy": [0.65], "retention_efficacy": [0.40], "specificity": [0.30]},
            "unedited": {},
        }
    )
    metrics = pd.concat(
        [
            metrics,
            pd.DataFrame(
                [(MODEL, DATASET, "hiedit", 0, 20, "unedited_specificity", 0.31)], columns=COLUMNS
            ),
        ]
    )
    table = claims_table(metrics, zsre_datasets=[DATASET])
    efficacy = row(table, "hiedit Efficacy − 60")
    assert efficacy["Difference"] == pytest.approx(5.0)
    assert efficacy["Seeds"] == 1 and efficacy["Verdict"] == ONE_SEED
    assert row(table, "hiedit Retention − 50")["Difference"] == pytest.approx(-10.0)
    within = row(table, "|hiedit − unedited on Specificity| ≤ 2")
    assert within["Difference"] == pytest.approx(-1.0)
    # Not a ZsRE dataset: no threshold rows.
    other = claims_table(metrics.assign(dataset="geofacts-counterfact"), zsre_datasets=[DATASET])
    assert not other["Comparison"].str.contains("− 60").any()


def write_per_edit(root: Path, variant: str, seed: int, selections: list[list[str]]) -> Path:
    path = root / MODEL / DATASET / variant / f"seed{seed}" / "per_edit.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "index": range(len(selections)),
            "relation": "P17",
            "selected": [";".join(s) for s in selections],
            "seconds": 0.01,
        }
    ).to_csv(path, index=False)
    return path


def test_router_entropy_and_distinct_sets_by_hand(tmp_path):
    # Always the same two modules: usage 1/2, 1/2 over L = 4 -> entropy log 2 / log 4 = 0.5.
    fixed = write_per_edit(tmp_path, "hiedit", 0, [MODULES[:2]] * 6)
    # Every pair in turn: uniform usage -> entropy 1; six distinct sets.
    pairs = [[a, b] for i, a in enumerate(MODULES) for b in MODULES[i + 1 :]]
    spread = write_per_edit(tmp_path, "no-intrinsic", 0, pairs)
    stats = router_stats(read_per_edit([fixed, spread]), {MODEL: 4}).set_index(
        ["variant", "metric"]
    )["value"]
    assert stats["hiedit", ROUTER_ENTROPY] == pytest.approx(0.5)
    assert stats["hiedit", ROUTER_SETS] == 1
    assert stats["no-intrinsic", ROUTER_ENTROPY] == pytest.approx(1.0)
    assert stats["no-intrinsic", ROUTER_SETS] == 6
    with pytest.raises(Exception, match="more than the 1 candidates"):
        router_stats(read_per_edit([spread]), {MODEL: 1})
    with pytest.raises(Exception, match="--n-modules"):
        router_stats(read_per_edit([spread]), {})


def test_router_claim_is_paired_over_seeds(tmp_path):
    rng = random.Random(0)
    paths = []
    for seed in range(3):
        paths.append(write_per_edit(tmp_path, "hiedit", seed, [MODULES[:2]] * 10))
        paths.append(
            write_per_edit(
                tmp_path, "no-intrinsic", seed, [rng.sample(MODULES, 2) for _ in range(40)]
            )
        )
    metrics = metrics_from({"hiedit": {"efficacy": [0.5, 0.5, 0.5]}})
    table = claims_table(metrics, per_edit=read_per_edit(paths), n_modules={MODEL: 4})
    entropy = row(table, "no-intrinsic − hiedit on normalised entropy")
    assert entropy["Seeds"] == 3 and entropy["Unit"] == "fraction"
    assert entropy["Verdict"] == HOLDS
    assert row(table, "no-intrinsic − hiedit on distinct")["Verdict"] == HOLDS
    # Without per-edit files the router rows are not run.
    bare = claims_table(metrics, n_modules={MODEL: 4})
    assert row(bare, "no-intrinsic − hiedit on distinct")["Verdict"] == NOT_RUN


def sweep_metrics(means_by_variant: dict[str, float], spread: float = 0.01):
    return metrics_from(
        {
            v: {
                "efficacy": [m - spread, m, m + spread],
                "retention_efficacy": [m - spread, m, m + spread],
            }
            for v, m in means_by_variant.items()
        }
    )


def test_k_sweep_reports_the_maximum_and_checks_l_over_2():
    # L = 8: hiedit at its K = 4 is L/2; the sweep peaks at K = 6 a point higher.
    metrics = sweep_metrics({"hiedit-k2": 0.40, "hiedit": 0.60, "hiedit-k6": 0.61, "rledit": 0.50})
    table = claims_table(metrics, default_k={MODEL: 4}, n_modules={MODEL: 8})
    efficacy = row(table, "K = L/2 − best K on Efficacy")
    assert "maximum at K = 6" in efficacy["Detail"]
    assert "2: 40.0, 4: 60.0, 6: 61.0, 8: 50.0" in efficacy["Detail"]
    assert efficacy["Difference"] == pytest.approx(-1.0)
    # K = 4's mean (60) lies within K = 6's interval (61 ± 12.7 · 1 / sqrt(3)).
    assert efficacy["Verdict"] == HOLDS
    # Far apart with tight intervals: contradicted.
    metrics = sweep_metrics({"hiedit-k2": 0.80, "hiedit": 0.60, "rledit": 0.50}, spread=0.001)
    table = claims_table(metrics, default_k={MODEL: 4}, n_modules={MODEL: 8})
    assert row(table, "K = L/2 − best K on Retention")["Verdict"] == CONTRADICTED
    # No K = L/2 run.
    table = claims_table(metrics, default_k={MODEL: 3}, n_modules={MODEL: 8})
    assert "K = 4 not run" in row(table, "K = L/2 − best K on Efficacy")["Detail"]
    # Only one K: no sweep.
    table = claims_table(sweep_metrics({"hiedit": 0.6}), default_k={MODEL: 4}, n_modules={MODEL: 8})
    sweep = row(table, "K = L/2 − best K on Efficacy")
    assert sweep["Verdict"] == NOT_RUN and "fewer than two" in sweep["Detail"]


def test_cli_writes_csv_and_html(tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    sweep_metrics({"hiedit": 0.6, "rledit": 0.5, "hiedit-rand": 0.55}).to_csv(metrics, index=False)
    paths = [write_per_edit(tmp_path / "eval", "hiedit", 0, [MODULES[:2]] * 4)]
    csv, html = tmp_path / "claims.csv", tmp_path / "claims.html"
    code = main(
        [
            "report",
            "claims",
            "--metrics",
            str(metrics),
            "--per-edit",
            *map(str, paths),
            "--default-k",
            f"{MODEL}=2",
            "--n-modules",
            f"{MODEL}=4",
            "--zsre",
            DATASET,
            "--csv",
            str(csv),
            "--html",
            str(html),
        ]
    )
    assert code == 0
    table = pd.read_csv(csv)
    assert set(table["Verdict"]) <= {HOLDS, CONTRADICTED, INCONCLUSIVE, ONE_SEED, NOT_RUN}
    assert (table["Model"] == MODEL).all()
    page = html.read_text()
    assert "Claims of the paper, tested" in page and "holds" in page
    # The rates are percentage points: hiedit − rledit efficacy is +10.
    assert "+10.00 [" in page
    assert table[table["Verdict"] != NOT_RUN]["Difference"].notna().all()
    assert "Verdict" in capsys.readouterr().out
