"""Copy the study's small result files into ``study/`` (committed) and write their provenance.

The study runs with ``snakemake --cores 2 --config setup=study`` and writes everything under
``results/study/`` (not committed: checkpoints and per-edit logs are large). This script keeps
what a reader needs beside the README: the tidy metrics table, the report's tables (CSV) and
figures (PNG), each editor's validation log, the router's statistics of every run
(``tables/router.csv``: module-usage entropy and distinct module sets, from the per-edit logs),
the wall time of every job, and a provenance file with the command, the source commit and the
library versions the runs recorded.

    python study/collect.py --results results/study --out study

Another setup's results go to their own folder, with the command that produced them:

    python study/collect.py --results results/study-1000 --out study/stream1000 \
        --command "snakemake --cores 2 --config setup=study-1000"

With ``--merge "<command>"`` it adds the complete evaluation runs found under ``results/study``
(those with a ``metrics_long.csv``) to what ``study/`` already holds instead of replacing it: their
metrics rows replace the committed rows of the same run (model, dataset, variant, seed), Table 1
is rebuilt from the merged metrics (time and memory cells of runs not rerun are kept from the
committed table), their router statistics replace those of the same runs, Table 2 and the claims
table are rebuilt from the merged metrics and router statistics (a claim row they still cannot
compute stays as committed), their job times replace the same jobs' times, and the provenance
file gains an entry with the given command and what those runs recorded. The figures are left as
committed: rerun the whole study to regenerate them.

    python study/collect.py --merge "snakemake --cores 2 --config setup=study -- <targets>"

With ``--long-stream`` it collects the long stream (``snakemake --config setup=study
long_stream``) into ``--out`` instead: each run's metrics, curve and a compressed per-edit cost log
(index, wall and editor seconds, resident memory, modules chosen), Figure 8 and its tables, the
long jobs' wall times and their provenance, and ``intervals.csv``: each final metric's mean with a
95 % Student-t interval over the scored records, and the paired difference of the first two
variants on the same records (record-to-record spread within one seed, not across seeds).

    python study/collect.py --long-stream --out study/long_stream \
        --command "snakemake --cores 2 --config setup=study long_stream"
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

COMMAND = "snakemake --cores 2 --config setup=study"
ROUTER_TABLE = Path("tables") / "router.csv"


def copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def job_seconds(results: Path) -> list[dict]:
    """Wall seconds of every job Snakemake benchmarked (``benchmarks/<rule>/…/<job>.tsv``)."""
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        with tsv.open() as f:
            record = next(csv.DictReader(f, delimiter="\t"), None)
        if record is None:
            continue
        parts = tsv.relative_to(results / "benchmarks").with_suffix("").parts
        # A rule with one job writes benchmarks/<rule>.tsv; the others <rule>/<job>.tsv.
        rule, job = parts[0], "/".join(parts[1:])
        rows.append(
            {
                "rule": rule,
                "job": job,
                "seconds": float(record["s"]),
                "max_rss_mib": record.get("max_rss"),
            }
        )
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    """``rows`` (dicts with the same keys) as a CSV file."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def provenance(results: Path, command: str = COMMAND, runs: str = "eval") -> dict:
    """Command, commits and versions recorded by the evaluation runs (they must agree)."""
    commits, versions, device = set(), {}, None
    for info in sorted((results / runs).rglob("runinfo.json")):
        data = json.loads(info.read_text())
        source = data.get("source") or {}
        commits.add(
            f"{source.get('commit')}{' (local changes)' if source.get('local_changes') else ''}"
        )
        versions = data.get("versions", versions)
        device = data.get("device")
    return {
        "command": command,
        "source_commits": sorted(commits),
        "versions": versions,
        "device": device,
    }


RUN_KEYS = ["model", "dataset", "variant", "seed"]
JOB_KEYS = ["rule", "job"]


def replace_rows(old: pd.DataFrame, new: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``old``'s rows whose key is not in ``new``, then all of ``new``'s rows."""
    import pandas as pd

    if old.empty:
        return new.reset_index(drop=True)
    new_keys = set(new[keys].astype(str).itertuples(index=False, name=None))
    kept = [k not in new_keys for k in old[keys].astype(str).itertuples(index=False, name=None)]
    return pd.concat([old[kept], new], ignore_index=True)


def merged_table1(
    metrics: pd.DataFrame,
    per_edit: pd.DataFrame,
    old: pd.DataFrame | None,
    model: str,
    dataset: str,
) -> pd.DataFrame:
    """Table 1 of the merged metrics; rows the new runs do not time keep their committed cost cells."""
    from hiedit.reporting.tables import MEMORY_COLUMN, MISSING, TIME_COLUMN, main_table

    table = main_table(metrics, model, dataset, source="merged metrics", per_edit=per_edit)
    if old is not None:
        committed = old.set_index("Variant")
        for i, variant in enumerate(table["Variant"]):
            if table.at[i, TIME_COLUMN] == MISSING and variant in committed.index:
                for column in (TIME_COLUMN, MEMORY_COLUMN):
                    if column in committed.columns:
                        table.at[i, column] = committed.at[variant, column]
    return table


def model_entries(config: dict, models: list[str]) -> dict[str, dict]:
    """The config's ``models.<name>`` entry of each model (its K and candidate modules)."""
    missing = [m for m in models if m not in config.get("models", {})]
    if missing:
        raise SystemExit(f"config: no models.{missing[0]} entry (its K and candidate modules)")
    return {m: config["models"][m] for m in models}


def router_table(per_edit: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The router statistics of every run in ``per_edit`` (see :func:`router_stats`)."""
    from hiedit.reporting.claims import router_stats

    entries = model_entries(config, sorted(per_edit["model"].unique()))
    return router_stats(per_edit, {m: len(e["modules"]) for m, e in entries.items()})


def merged_claims(
    metrics: pd.DataFrame,
    old: pd.DataFrame | None,
    config: dict,
    models: list[str],
    router: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The claims table of the merged metrics and router statistics; rows it cannot compute keep
    their committed values."""
    from hiedit.reporting.claims import NOT_RUN, claims_table

    entries = model_entries(config, models)
    table = claims_table(
        metrics,
        default_k={m: e["k"] for m, e in entries.items()},
        n_modules={m: len(e["modules"]) for m, e in entries.items()},
        zsre_datasets=[d for d, e in config["datasets"].items() if e.get("format") == "zsre"],
        router=router,
    )
    if old is None:
        return table
    key = ["Model", "Dataset", "Kind", "Claim", "Comparison"]
    committed = {tuple(row[k] for k in key): row for row in old.to_dict("records")}
    for i, row in table.iterrows():
        kept = committed.get(tuple(row[k] for k in key))
        if row["Verdict"] == NOT_RUN and kept is not None and kept["Verdict"] != NOT_RUN:
            table.loc[i] = [kept[c] for c in table.columns]
    return table


def merge(
    results: Path, out: Path, command: str, config_path: Path = Path("config.yaml")
) -> list[str]:
    """Add the complete runs under ``results`` to ``out`` (see the module's docstring)."""
    import pandas as pd

    from hiedit.config import load_config
    from hiedit.evaluation.outputs import gather
    from hiedit.reporting.inputs import read_metrics, read_per_edit, run_identity
    from hiedit.reporting.tables import ablation_table

    runs = sorted((results / "eval").rglob("metrics_long.csv"))
    if not runs:
        raise SystemExit(f"{results / 'eval'}: no complete evaluation run to merge")
    new = gather(runs)
    table_path = out / "tables" / "metrics.csv"
    metrics = replace_rows(read_metrics(table_path), new, RUN_KEYS)
    metrics.to_csv(table_path, index=False)
    per_edit = read_per_edit([run.with_name("per_edit.csv") for run in runs])
    config = load_config(config_path)
    router_path = out / ROUTER_TABLE
    old_router = pd.read_csv(router_path) if router_path.is_file() else pd.DataFrame()
    router = replace_rows(old_router, router_table(per_edit, config), RUN_KEYS)
    router.to_csv(router_path, index=False)
    for model, dataset in metrics[["model", "dataset"]].drop_duplicates().itertuples(index=False):
        path = out / "report" / "table1" / model / f"{dataset}.csv"
        old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        merged_table1(metrics, per_edit, old, model, dataset).to_csv(path, index=False)
        path = out / "report" / "table2" / model / f"{dataset}.csv"
        if path.is_file():  # Table 2 exists where hiedit ran
            ablation_table(metrics, model, dataset, source="merged metrics").to_csv(
                path, index=False
            )
    claims_path = out / "report" / "claims.csv"
    if claims_path.is_file():
        models = sorted(metrics["model"].unique())
        old_claims = pd.read_csv(claims_path, keep_default_na=False)
        merged_claims(metrics, old_claims, config, models, router).to_csv(claims_path, index=False)
    editors = results / "editors"
    for path in sorted(editors.rglob("validation.csv")):
        copy(path, out / "validation" / path.relative_to(editors))
    rows = job_seconds(results)
    if rows:
        seconds = out / "job_seconds.csv"
        old_rows = (
            pd.read_csv(seconds, dtype={"job": str}, keep_default_na=False)
            if seconds.is_file()
            else pd.DataFrame()
        )
        replace_rows(old_rows, pd.DataFrame(rows), JOB_KEYS).to_csv(seconds, index=False)
    info_path = out / "provenance.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    names = []
    for run in runs:
        r = run_identity(run)
        names.append(f"{r['model']}/{r['dataset']}/{r['variant']}/seed{r['seed']}")
    entry = {"runs": names, **provenance(results), "command": command}
    info["merged"] = [m for m in info.get("merged", []) if m["runs"] != names] + [entry]
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    return names


# The per-edit columns kept for the long stream: its cost along the stream, not its scores (those
# are summarised in metrics and curve).
LONG_COST_COLUMNS = ["index", "wall_seconds", "seconds", "rss_mib", "n_selected", "selected"]


# Final metrics of the long stream: (name, per-edit column, rows: the whole-stream sample or the
# first num_pre records).
LONG_METRICS = [
    ("efficacy", "efficacy", "whole"),
    ("generalization", "generalization", "whole"),
    ("specificity", "specificity", "whole"),
    ("specificity_agreement_correct", "specificity_agreement_correct", "whole"),
    ("specificity_kl", "specificity_kl", "whole"),
    ("retention_efficacy", "efficacy", "first"),
]


def long_stream_intervals(runs: dict[str, pd.DataFrame], num_pre: int) -> pd.DataFrame:
    """``intervals.csv`` (module docstring) from each variant's full ``per_edit.csv``."""
    import pandas as pd

    from hiedit.reporting.tables import mean_interval

    def interval_row(run: str, metric: str, values: pd.Series) -> dict:
        found = mean_interval(values.dropna().tolist())
        return {
            "run": run,
            "metric": metric,
            "mean": found.mean,
            "half_width": found.half_width,
            "n": found.n,
        }

    def rows_of(frame: pd.DataFrame, rows: str) -> pd.DataFrame:
        if rows == "first":
            return frame.iloc[:num_pre]
        if "whole_stream_sample" in frame:
            return frame[frame["whole_stream_sample"]]
        return frame

    out = []
    for variant, frame in runs.items():
        for name, column, rows in LONG_METRICS:
            for who, prefix in ((variant, ""), ("unedited model", "unedited_")):
                if prefix + column not in frame:
                    continue
                out.append(interval_row(who, name, rows_of(frame, rows)[prefix + column]))
    names = list(runs)
    if len(names) >= 2:
        a, b = runs[names[0]], runs[names[1]]
        for name, column, rows in LONG_METRICS:
            if column in a and column in b:
                diff = rows_of(a, rows)[column] - rows_of(b, rows)[column]
                out.append(interval_row(f"{names[0]} - {names[1]}", name, diff))
    table = pd.DataFrame(out).drop_duplicates(subset=["run", "metric"])
    return table.reset_index(drop=True)


def collect_long_stream(results: Path, out: Path, command: str) -> list[str]:
    """The long stream's small outputs into ``out`` (module docstring); returns what it wrote."""
    import pandas as pd

    written = []
    long = results / "long"
    runs, num_pre = {}, None
    for metrics in sorted(long.rglob("metrics.json")):
        run = metrics.parent
        dest = out / run.relative_to(long)
        num_pre = json.loads(metrics.read_text())["num_pre"]
        for name in ("metrics.json", "metrics_long.csv", "curve.csv", "runinfo.json"):
            if (run / name).is_file():
                copy(run / name, dest / name)
                written.append(str(dest / name))
        per_edit = pd.read_csv(run / "per_edit.csv")
        per_edit[LONG_COST_COLUMNS].to_csv(dest / "per_edit_cost.csv.gz", index=False)
        written.append(str(dest / "per_edit_cost.csv.gz"))
        variant = run.relative_to(long).parts[2]  # model/dataset/variant/seed
        if variant in runs:
            raise SystemExit(f"{run}: intervals.csv compares one long run per variant, found two")
        runs[variant] = per_edit
    if runs:
        # hiedit first, so the difference reads hiedit - rledit
        order = sorted(runs, key=lambda v: (v != "hiedit", v))
        table = long_stream_intervals({v: runs[v] for v in order}, num_pre)
        table.to_csv(out / "intervals.csv", index=False, float_format="%.6g")
        written.append(str(out / "intervals.csv"))
    for path in sorted((results / "report").glob("figure8_long_stream*")):
        copy(path, out / "report" / path.name)
        written.append(str(out / "report" / path.name))
    rows = [
        row
        for row in job_seconds(results)
        if row["rule"] in {"evaluate_long", "train_editor", "prepare_data"}
    ]
    if rows:
        write_rows(rows, out / "job_seconds.csv")
        written.append(str(out / "job_seconds.csv"))
    (out / "provenance.json").write_text(
        json.dumps(provenance(results, command, runs="long"), indent=1) + "\n"
    )
    written.append(str(out / "provenance.json"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/study"))
    parser.add_argument("--out", type=Path, default=Path("study"))
    parser.add_argument(
        "--merge",
        metavar="COMMAND",
        help="add the complete runs under --results to --out; COMMAND is what produced them",
    )
    parser.add_argument(
        "--long-stream",
        action="store_true",
        help="collect the long stream's runs (results/<setup>/long) instead of the study's",
    )
    parser.add_argument(
        "--config", type=Path, default=Path("config.yaml"), help="the models' candidate modules"
    )
    parser.add_argument(
        "--command", default=COMMAND, help="the command that produced --results (provenance)"
    )
    args = parser.parse_args()
    results, out = args.results, args.out
    if args.long_stream:
        for name in collect_long_stream(results, out, args.command):
            print(f"wrote {name}")
        return
    if args.merge:
        for name in merge(results, out, args.merge, args.config):
            print(f"merged {name}")
        return
    from hiedit.config import load_config
    from hiedit.reporting.inputs import read_per_edit

    copy(results / "tables" / "metrics.csv", out / "tables" / "metrics.csv")
    per_edit = read_per_edit(sorted((results / "eval").rglob("per_edit.csv")))
    router_table(per_edit, load_config(args.config)).to_csv(out / ROUTER_TABLE, index=False)
    report = results / "report"
    for path in sorted(report.rglob("*")):
        if path.suffix in {".csv", ".png"}:
            copy(path, out / "report" / path.relative_to(report))
    editors = results / "editors"
    for path in sorted(editors.rglob("validation.csv")):
        copy(path, out / "validation" / path.relative_to(editors))
    rows = job_seconds(results)
    if rows:
        write_rows(rows, out / "job_seconds.csv")
    (out / "provenance.json").write_text(
        json.dumps(provenance(results, args.command), indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
