"""The README's study tables are rendered from the committed CSVs (study/readme_tables.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd

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
