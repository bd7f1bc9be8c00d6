"""The README's study tables are rendered from the committed CSVs (study/readme_tables.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "study" / "readme_tables.py"


def _module():
    spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics() -> pd.DataFrame:
    rows = []
    for seed, eff in enumerate([0.30, 0.32, 0.34]):
        for n_edits, scale in [(100, 2.0), (400, 1.0)]:  # the 100-edit rows are a curve point
            rows += [
                ("m", "d", "hiedit", seed, n_edits, "efficacy", eff * scale),
                ("m", "d", "hiedit", seed, n_edits, "unedited_efficacy", 0.1),
                ("m", "d", "hiedit", seed, n_edits, "specificity_kl", 0.5 + seed),
            ]
    rows.append(("m", "d", "ft-m", 0, 400, "efficacy", 0.25))
    rows.append(("m", "other", "ft-m", 0, 400, "efficacy", 0.99))
    return pd.DataFrame(
        rows, columns=["model", "dataset", "variant", "seed", "n_edits", "metric", "value"]
    )


def test_metrics_table_reads_final_rows_with_intervals():
    table = _module().metrics_table(_metrics(), "d").splitlines()
    # mean of 30, 32, 34 = 32.0, t(2) = 4.303, sd 2: half-width 4.303 * 2 / sqrt(3) = 4.97
    hiedit = next(line for line in table if "`hiedit`" in line)
    assert "| 3 | 32.0 ± 5.0 |" in hiedit
    assert "1.500 ± 2.484" in hiedit  # KL in nats, three decimals, not scaled to %
    assert "| — |" in hiedit  # a metric the run did not record
    ft_m = next(line for line in table if "`ft-m`" in line)
    assert "| 1 | 25.0 |" in ft_m  # one run: no interval, the other dataset's row ignored
    unedited = next(line for line in table if line.startswith("| unedited model"))
    assert "| 10.0 ± 0.0 |" in unedited and "| 100 |" in unedited
    # the registry's order: hiedit before the baselines
    assert table.index(hiedit) < table.index(ft_m)


def test_claims_table_and_cli(tmp_path):
    claims = pd.DataFrame(
        [
            ("d", "claim", "A > B", "a − b on X", "points", 3, 1.5, -0.5, 3.5, "inconclusive", ""),
            ("d", "claim", "C", "c − d on Y", "count", 0, None, None, None, "not run", "d absent"),
        ],
        columns=[
            "Dataset", "Kind", "Claim", "Comparison", "Unit", "Seeds",
            "Difference", "Low", "High", "Verdict", "Detail",
        ],
    )  # fmt: skip
    (tmp_path / "tables").mkdir()
    (tmp_path / "report").mkdir()
    _metrics().to_csv(tmp_path / "tables" / "metrics.csv", index=False)
    claims.to_csv(tmp_path / "report" / "claims.csv", index=False)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "d", "--study", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "| claim | A > B | a − b on X | 3 | +1.50 [-0.50, +3.50] | inconclusive |" in out
    assert "| claim | C | c − d on Y (count) | 0 | — | not run — d absent |" in out
    assert "`hiedit`" in out


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "study" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collect_merge_adds_runs_and_keeps_the_rest(tmp_path):
    """--merge: a new run's rows replace its own committed rows only; Table 1 keeps the cost
    cells of runs not rerun; job times and provenance gain the new entries."""
    out, results = tmp_path / "study", tmp_path / "results"
    committed = _metrics()
    committed = committed[committed["dataset"] == "d"]
    (out / "tables").mkdir(parents=True)
    committed.to_csv(out / "tables" / "metrics.csv", index=False)
    old_table = _module().pd.DataFrame(
        [
            {"Variant": "hiedit", "Time per edit (ms)": "12.5 ± 1.0", "Peak RSS (MiB)": "900 ± 3"},
            {"Variant": "ft-m", "Time per edit (ms)": "99.0", "Peak RSS (MiB)": "950"},
        ]
    )
    (out / "report" / "table1" / "m").mkdir(parents=True)
    old_table.to_csv(out / "report" / "table1" / "m" / "d.csv", index=False)
    pd.DataFrame(
        [
            ("evaluate", "m/d/hiedit/seed0", 10.0, 900.0),
            ("evaluate", "m/d/ft-m/seed0", 20.0, 950.0),
        ],
        columns=["rule", "job", "seconds", "max_rss_mib"],
    ).to_csv(out / "job_seconds.csv", index=False)
    (out / "provenance.json").write_text('{"command": "full study"}')
    claim_columns = [
        "Model", "Dataset", "Kind", "Claim", "Comparison", "Unit", "Margin", "Seeds",
        "Difference", "Low", "High", "Verdict", "Detail",
    ]  # fmt: skip
    router_claim = "without the intrinsic reward the router drifts toward dense behaviour"
    entropy_row = "no-intrinsic − hiedit on normalised entropy of module usage"
    pd.DataFrame(
        [
            # hiedit's committed statistics have no entropy: stays as committed
            ("m", "d", "claim", router_claim, entropy_row,
             "fraction", 0.0, 1, 0.1, 0.1, 0.1, "inconclusive (one seed)", ""),
            # hiedit's committed set count and the merged no-intrinsic run's: rebuilt
            ("m", "d", "claim", router_claim, "no-intrinsic − hiedit on distinct module sets",
             "count", 0.0, 1, 35.0, 35.0, 35.0, "inconclusive (one seed)", ""),
            # computable from the merged metrics: rebuilt (the stale values go)
            ("m", "d", "target", "ZsRE: hiedit efficacy ≥ 60", "hiedit Efficacy − 60",
             "points", 60.0, 1, 0.0, 0.0, 0.0, "inconclusive (one seed)", ""),
        ],
        columns=claim_columns,
    ).to_csv(out / "report" / "claims.csv", index=False)  # fmt: skip
    (out / "report" / "table2" / "m").mkdir(parents=True)
    pd.DataFrame([{"Variant": "stale"}]).to_csv(out / "report" / "table2" / "m" / "d.csv")
    # Router statistics committed by an earlier merge: hiedit's set count, and a stale ft-m row.
    pd.DataFrame(
        [
            ("m", "d", "hiedit", 0, "router_sets", 4.0),
            ("m", "d", "ft-m", 0, "router_sets", 9.0),
        ],
        columns=["model", "dataset", "variant", "seed", "metric", "value"],
    ).to_csv(out / "tables" / "router.csv", index=False)
    config = tmp_path / "config.yaml"
    config.write_text("models: {m: {k: 1, modules: [a, b]}}\ndatasets: {d: {format: zsre}}\n")

    # The new runs: ft-m seed 0 again (replaces its rows), a new baseline and a router variant.
    selections = {"ft-m": ["a;b"] * 3, "alphaedit": ["a;b"] * 3, "no-intrinsic": ["a", "b", "a"]}
    for variant, eff in (("ft-m", 0.5), ("alphaedit", 0.4), ("no-intrinsic", 0.3)):
        run = results / "eval" / "m" / "d" / variant / "seed0"
        run.mkdir(parents=True)
        pd.DataFrame(
            [
                ("m", "d", variant, 0, 400, "efficacy", eff),
                ("m", "d", variant, 0, 400, "unedited_efficacy", 0.1),
            ],
            columns=["model", "dataset", "variant", "seed", "n_edits", "metric", "value"],
        ).to_csv(run / "metrics_long.csv", index=False)
        pd.DataFrame(
            {
                "index": [0, 1, 2],
                "relation": "r",
                "selected": selections[variant],
                "seconds": [0.2, 0.3, 0.4],
                "rss_mib": 1000.0,
            }
        ).to_csv(run / "per_edit.csv", index=False)
        (run / "runinfo.json").write_text(
            '{"source": {"commit": "abc", "local_changes": false}, "versions": {"torch": "9"}}'
        )
        bench = results / "benchmarks" / "evaluate" / "m" / "d" / variant
        bench.mkdir(parents=True)
        (bench / "seed0.tsv").write_text("s\tmax_rss\n33.0\t1000.0\n")
    # A rule with a single job benchmarks to benchmarks/<rule>.tsv.
    (results / "benchmarks" / "build_model.tsv").write_text("s\tmax_rss\n7.0\t500.0\n")

    names = _load("collect").merge(results, out, "snakemake -- new targets", config)
    assert names == ["m/d/alphaedit/seed0", "m/d/ft-m/seed0", "m/d/no-intrinsic/seed0"]

    metrics = pd.read_csv(out / "tables" / "metrics.csv")
    final = metrics[(metrics["metric"] == "efficacy") & (metrics["n_edits"] == 400)]
    eff = final.set_index(["variant", "seed"])["value"]
    assert eff[("ft-m", 0)] == 0.5 and eff[("alphaedit", 0)] == 0.4  # replaced, added
    assert eff.loc["hiedit"].tolist() == [0.30, 0.32, 0.34]  # not rerun: kept
    hiedit_rows = committed[committed["variant"] == "hiedit"]
    assert len(metrics[metrics["variant"] == "hiedit"]) == len(hiedit_rows)

    table = pd.read_csv(out / "report" / "table1" / "m" / "d.csv", keep_default_na=False).set_index(
        "Variant"
    )
    assert table.at["hiedit", "Time per edit (ms)"] == "12.5 ± 1.0"  # not rerun: committed cell
    assert table.at["hiedit", "Seeds"] == 3
    assert table.at["ft-m", "Time per edit (ms)"] == "300.0"  # rerun: median of its per-edit times
    assert table.at["alphaedit", "Efficacy"] == "40.00"

    ablations = pd.read_csv(out / "report" / "table2" / "m" / "d.csv").set_index("Variant")
    assert ablations.index.tolist() == ["hiedit", "no-intrinsic"]
    assert ablations.at["hiedit", "Seeds"] == 3
    router = pd.read_csv(out / "tables" / "router.csv").set_index(["variant", "seed", "metric"])
    assert router.at[("hiedit", 0, "router_sets"), "value"] == 4.0  # not rerun: kept
    assert router.at[("ft-m", 0, "router_sets"), "value"] == 1.0  # rerun: replaced
    assert router.at[("no-intrinsic", 0, "router_sets"), "value"] == 2.0  # {a}, {b}
    usage = [2 / 3, 1 / 3]  # a twice, b once; the entropy is divided by log L = log 2
    entropy = -sum(p * math.log(p) for p in usage) / math.log(2)
    assert router.at[("no-intrinsic", 0, "router_entropy"), "value"] == pytest.approx(entropy)
    claims = pd.read_csv(out / "report" / "claims.csv").set_index("Comparison")
    assert claims.at[entropy_row, "Difference"] == 0.1  # kept
    assert claims.at["no-intrinsic − hiedit on distinct module sets", "Difference"] == 2.0 - 4.0
    target = claims.loc["hiedit Efficacy − 60"]
    assert target["Seeds"] == 3 and abs(target["Difference"] - (32.0 - 60.0)) < 1e-9

    seconds = pd.read_csv(out / "job_seconds.csv").set_index("job")["seconds"]
    assert seconds["m/d/hiedit/seed0"] == 10.0 and seconds["m/d/ft-m/seed0"] == 33.0
    assert seconds["m/d/alphaedit/seed0"] == 33.0
    rules = pd.read_csv(out / "job_seconds.csv", keep_default_na=False).set_index("rule")
    assert rules.at["build_model", "seconds"] == 7.0 and rules.at["build_model", "job"] == ""

    info = json.loads((out / "provenance.json").read_text())
    assert info["command"] == "full study"
    (entry,) = info["merged"]
    assert entry["command"] == "snakemake -- new targets" and entry["runs"] == names
    assert entry["source_commits"] == ["abc"] and entry["versions"] == {"torch": "9"}
