"""Flat long streams: per-edit wall time and resident memory along a long sequential stream.

Runs the real stream (``hiedit.evaluation.stream.run_stream``) with a cheap editor that needs no
training: the untrained HiEdit networks with a set step size (``--lr``), on the first
``--n-edits`` records of an eval split. Writes the stream's ``per_edit.csv`` and a summary CSV
with, per window of ``--window`` edits, the median per-edit wall time and the resident memory,
the ratio of the last window's median to the first's (the target: within 10 %), the memory
growth, and the final O(T) scoring's throughput (scored tuples per second); with ``--plot``, the
report's long-stream panels of those windows. Times are this machine's: compare the ratio, not
the seconds, across machines.

Example (the study's 20,000-record ZsRE eval split)::

    python benchmarks/long_stream.py --setup study --model smollm2-135m --lr 1e-4 \\
        --eval-data results/study/data/geofacts-zsre/eval.parquet --n-edits 20000 \\
        --out results/study/bench/long_stream/smollm2-135m.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
from pathlib import Path

import torch

from hiedit.config import job_config, load_config, resolve_setup
from hiedit.data import read_split
from hiedit.editor import load_editor
from hiedit.evaluation.runinfo import cpu_name, library_version
from hiedit.evaluation.stream import StreamSettings, run_stream
from hiedit.models import load_model

log = logging.getLogger("long_stream")


def window_summary(per_edit, window: int) -> list[dict]:
    """Median wall time per edit and memory per window of ``window`` consecutive edits."""
    rows = []
    for start in range(0, len(per_edit), window):
        part = per_edit.iloc[start : start + window]
        rows.append(
            {
                "first_edit": start,
                "last_edit": start + len(part) - 1,
                "median_edit_seconds": float(part["wall_seconds"].median()),
                "rss_mib": float(part["rss_mib"].max()),
            }
        )
    return rows


def plot_windows(per_edit, args: argparse.Namespace, variant: str) -> None:
    """The report's Figure 8 panels (window medians of wall time and RSS) for this stream."""
    from hiedit.reporting.long_stream import long_stream_figure, stream_windows

    run = per_edit.assign(model=args.model, dataset=args.dataset, variant=variant, seed=0)
    long_stream_figure(stream_windows(run, args.window), None, args.plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--setup", default="study")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="geofacts-zsre")
    parser.add_argument("--eval-data", required=True)
    parser.add_argument("--n-edits", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=1e-4, help="the untrained editor's step size")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-edit", help="where to write the stream's per_edit.csv")
    parser.add_argument(
        "--plot", help="where to write the report's long-stream figure of these windows (PNG)"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    resolved = resolve_setup(config, args.setup)
    job = job_config(config, resolved, args.model, args.dataset, "hiedit-untrained", 0)
    job["editor"]["lr"] = args.lr
    job["evaluation"].update(n_edits=args.n_edits, n_curve_points=0)
    model, tokenizer = load_model(job["model"])
    editor = load_editor(job, model, tokenizer, None)
    records = read_split(args.eval_data)[: args.n_edits]
    if len(records) < args.n_edits:
        raise SystemExit(f"{args.eval_data}: {len(records)} records, fewer than {args.n_edits}")
    settings = StreamSettings.from_job_config(editor.job)
    result = run_stream(editor, model, tokenizer, records, settings, progress=True)
    windows = window_summary(result.per_edit, args.window)
    tuples = 3 * len(records)
    summary = {
        "model": args.model,
        "n_edits": len(records),
        "lr": args.lr,
        "first_window_median_s": windows[0]["median_edit_seconds"],
        "last_window_median_s": windows[-1]["median_edit_seconds"],
        "last_over_first": windows[-1]["median_edit_seconds"] / windows[0]["median_edit_seconds"],
        "rss_first_mib": windows[0]["rss_mib"],
        "rss_last_mib": windows[-1]["rss_mib"],
        "final_scoring_tuples_per_s": tuples / result.seconds["final_scoring"],
        "device": cpu_name(),
        "threads": args.threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": library_version("torch"),
        "python": platform.python_version(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["kind", *windows[0], *summary])
        writer.writeheader()
        for row in windows:
            writer.writerow({"kind": "window", **row})
        writer.writerow({"kind": "summary", **summary})
    if args.per_edit:
        result.per_edit.to_csv(args.per_edit, index=False)
    if args.plot:
        plot_windows(result.per_edit, args, job["variant"])
    log.info(
        "last/first window median per-edit time %.3f; RSS %.0f -> %.0f MiB; scoring %.1f tuples/s",
        summary["last_over_first"],
        summary["rss_first_mib"],
        summary["rss_last_mib"],
        summary["final_scoring_tuples_per_s"],
    )


if __name__ == "__main__":
    main()
