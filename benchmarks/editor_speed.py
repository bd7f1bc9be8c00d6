"""Editor speed on CPU/GPU: seconds per training step at steady state, seconds per eval edit, peak RSS.

Runs in one process on one model: a training warm-up until the backtracking window is full, then
timed training steps (capture, route, side-path losses under ω, the base and the full mask,
backward, commit; optimiser steps as configured); then a sequential eval stream of timed edits
(capture, route, update of the selected modules, commit) for ``hiedit`` and, in the same process,
for the dense ``rledit`` (all modules) as a ratio. Results are appended to a CSV with the library
versions, the device, the thread count and the load average (the machines are shared: compare
ratios measured in one run, not absolute times across runs).

Example (embedded model, 12 candidate modules, K = 6, back_depth 10)::

    python benchmarks/editor_speed.py --setup default --model smollm2-135m \
        --train-data results/data/geofacts-zsre/train.parquet \
        --eval-data results/data/geofacts-zsre/eval.parquet --out results/benchmarks/editor_speed.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from hiedit.config import job_config, load_config, resolve_setup
from hiedit.data import read_split
from hiedit.editor import load_editor
from hiedit.editor.trainer import Trainer
from hiedit.evaluation.runinfo import cpu_name, library_version
from hiedit.models import load_model

log = logging.getLogger("editor_speed")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_training(editor, records, back_depth: int, steps: int) -> list[float]:
    trainer = Trainer(editor, records)
    editor.reset_weights()
    window = []
    times = []
    every = int(trainer.cfg["update_every"])
    for step in range(back_depth - 1 + steps):
        window.append(trainer.step_records(0, step))
        window = window[-back_depth:]
        start = time.perf_counter()
        trainer.train_step(window, step)
        if (step + 1) % every == 0:
            trainer.optimizer_step()
        elapsed = time.perf_counter() - start
        if len(window) == back_depth:  # steady state: the backtracking window is full
            times.append(elapsed)
        trainer.global_step += 1
    editor.reset_weights()
    return times


def time_edits(editor, records, warmup: int = 3) -> list[float]:
    editor.reset_model()
    times = []
    for i, record in enumerate(records):
        start = time.perf_counter()
        editor.edit_records([record])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    editor.reset_model()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--setup", default="default")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-data", required=True)
    parser.add_argument("--eval-data", required=True)
    parser.add_argument("--train-steps", type=int, default=5, help="timed steady-state steps")
    parser.add_argument("--edits", type=int, default=30, help="timed eval edits (after 3 warm-up)")
    parser.add_argument("--back-depth", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/benchmarks/editor_speed.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    resolved = resolve_setup(config, args.setup)
    dataset = resolved["datasets"][0]
    job = job_config(config, resolved, args.model, dataset, "hiedit", resolved["seeds"][0])
    job["training"]["back_depth"] = args.back_depth
    model, tokenizer = load_model(job["model"])
    train_records = read_split(args.train_data)
    eval_records = read_split(args.eval_data)[: args.edits + 3]

    rows = []
    editor = load_editor(job, model, tokenizer, None)
    steps = time_training(editor, train_records, args.back_depth, args.train_steps)
    rows.append(("train_step_seconds", steps))
    rows.append(("eval_edit_seconds_hiedit", time_edits(editor, eval_records)))
    dense_job = {**job, "variant": "rledit"}
    dense = load_editor(dense_job, model, tokenizer, None)
    rows.append(("eval_edit_seconds_rledit", time_edits(dense, eval_records)))

    common = {
        "model": args.model,
        "n_modules": len(editor.module_names),
        "k": editor.k,
        "back_depth": args.back_depth,
        "device": cpu_name(),
        "threads": args.threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": library_version("torch"),
        "transformers": library_version("transformers"),
        "python": platform.python_version(),
    }
    out_rows = []
    for metric, values in rows:
        out_rows.append(
            {
                **common,
                "metric": metric,
                "median": round(statistics.median(values), 4),
                "min": round(min(values), 4),
                "n": len(values),
            }
        )
    out_rows.append(
        {**common, "metric": "peak_rss_mib", "median": round(peak_rss_mb(), 1), "min": "", "n": 1}
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out_rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(out_rows)
    for row in out_rows:
        log.info("%s: median %s, min %s (n=%s)", row["metric"], row["median"], row["min"], row["n"])


if __name__ == "__main__":
    main()
