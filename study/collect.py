"""Copy the study's small result files into ``study/`` (committed) and write their provenance.

The study runs with ``snakemake --cores 2 --config setup=study`` and writes everything under
``results/study/`` (not committed: checkpoints and per-edit logs are large). This script keeps
what a reader needs beside the README: the tidy metrics table, the report's tables (CSV) and
figures (PNG), each editor's validation log, the wall time of every job, and a provenance file
with the command, the source commit and the library versions the runs recorded.

    python study/collect.py --results results/study --out study
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

COMMAND = "snakemake --cores 2 --config setup=study"


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
        rule = tsv.relative_to(results / "benchmarks").parts[0]
        job = str(tsv.relative_to(results / "benchmarks" / rule).with_suffix(""))
        rows.append(
            {
                "rule": rule,
                "job": job,
                "seconds": float(record["s"]),
                "max_rss_mib": record.get("max_rss"),
            }
        )
    return rows


def provenance(results: Path) -> dict:
    """Command, commits and versions recorded by the evaluation runs (they must agree)."""
    commits, versions, device = set(), {}, None
    for info in sorted((results / "eval").rglob("runinfo.json")):
        data = json.loads(info.read_text())
        source = data.get("source") or {}
        commits.add(
            f"{source.get('commit')}{' (local changes)' if source.get('local_changes') else ''}"
        )
        versions = data.get("versions", versions)
        device = data.get("device")
    return {
        "command": COMMAND,
        "source_commits": sorted(commits),
        "versions": versions,
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/study"))
    parser.add_argument("--out", type=Path, default=Path("study"))
    args = parser.parse_args()
    results, out = args.results, args.out
    copy(results / "tables" / "metrics.csv", out / "tables" / "metrics.csv")
    report = results / "report"
    for path in sorted(report.rglob("*")):
        if path.suffix in {".csv", ".png"}:
            copy(path, out / "report" / path.relative_to(report))
    editors = results / "editors"
    for path in sorted(editors.rglob("validation.csv")):
        copy(path, out / "validation" / path.relative_to(editors))
    rows = job_seconds(results)
    if rows:
        with (out / "job_seconds.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (out / "provenance.json").write_text(json.dumps(provenance(results), indent=1) + "\n")


if __name__ == "__main__":
    main()
