"""Editor speed on CPU/GPU: seconds per training step at steady state, seconds per eval edit, peak RSS.

Runs in one process on one model: a training warm-up until the backtracking window is full, then
timed training steps (capture, route, side-path losses under ω, the base and the full mask,
backward, commit; optimiser steps as configured); then a sequential eval stream of timed edits
(capture, route, update of the selected modules, commit; each phase also on its own) for
``hiedit`` and, in the same process,
for the dense ``rledit`` (all modules) as a ratio; a plain no-grad forward of each edit prompt
(the floor under an eval edit on this machine); and the final-scoring throughput in scored
tuples per second (``median`` is then a rate, higher is better). Results are appended to a CSV with the library
versions, the device, the thread count and the load average (the machines are shared: compare
ratios measured in one run, not absolute times across runs).

Example (embedded model, 12 candidate modules, K = 6, back_depth 10)::

    python benchmarks/editor_speed.py --setup default --model smollm2-135m --side-path-chunk 5 \
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
from contextlib import nullcontext
from pathlib import Path

import torch

from hiedit.config import job_config, load_config, resolve_setup
from hiedit.data import read_split
from hiedit.editor import load_editor
from hiedit.editor.trainer import Trainer
from hiedit.evaluation.metrics import score_records
from hiedit.evaluation.runinfo import cpu_name, library_version
from hiedit.models import load_model

log = logging.getLogger("editor_speed")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_training(editor, records, back_depth: int, steps: int) -> tuple[list[float], float]:
    """Seconds per steady-state training step, and the matrix-product GFLOP of one such step.

    The FLOP count comes from ``torch.profiler`` (``with_flops``: the products' own count of
    multiply-adds, times two) over one extra step after the timed ones, so the profiler's
    overhead is not in the times.
    """
    trainer = Trainer(editor, records)
    editor.reset_weights()
    window = []
    times = []
    gflop = float("nan")
    every = trainer.cfg.update_every
    for step in range(back_depth - 1 + steps + 1):
        window.append(trainer.step_records(0, step))
        window = window[-back_depth:]
        profiled = step == back_depth - 1 + steps
        with torch.profiler.profile(with_flops=True) if profiled else nullcontext() as prof:
            start = time.perf_counter()
            trainer.train_step(window, step)
            if (step + 1) % every == 0:
                trainer.optimizer_step()
            elapsed = time.perf_counter() - start
        if profiled:
            gflop = sum(event.flops for event in prof.key_averages()) / 1e9
        elif len(window) == back_depth:  # steady state: the backtracking window is full
            times.append(elapsed)
        trainer.global_step += 1
    editor.reset_weights()
    return times, gflop


def time_gemm(rows: int, d_in: int, d_out: int, repeats: int = 50) -> list[float]:
    """GFLOP/s of a lone fp32 product (rows × d_in by d_in × d_out): this machine's product rate."""
    x, w = torch.randn(rows, d_in), torch.randn(d_out, d_in)
    torch.nn.functional.linear(x, w)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        rates.append(2 * rows * d_in * d_out / (time.perf_counter() - start) / 1e9)
    return rates


def time_edits(editor, records, warmup: int = 3) -> tuple[list[float], dict[str, list[float]]]:
    """Seconds per sequential edit, and per phase (capture, route, update, commit) of each edit."""
    editor.reset_model()
    times = []
    phases: dict[str, list[float]] = {}
    for i, record in enumerate(records):
        start = time.perf_counter()
        step = editor.edit_records([record])
        if i >= warmup:
            times.append(time.perf_counter() - start)
            for name, seconds in step.phases.items():
                phases.setdefault(name, []).append(seconds)
    editor.reset_model()
    return times, phases


def time_forwards(editor, records, warmup: int = 3) -> list[float]:
    """A no-grad forward of each edit prompt at the base weights: the floor under an eval edit.

    An eval edit runs this forward with a graph, a partial backward, the networks and the
    commit, so it cannot be faster than this on the same machine.
    """
    editor.reset_model()
    times = []
    with torch.no_grad():
        for i, record in enumerate(records):
            batch = editor.encode([record.edit])
            start = time.perf_counter()
            editor.model(**batch.model_inputs(), use_cache=False)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def time_scoring(editor, records, batch_size: int, repeats: int = 3) -> list[float]:
    """Final-scoring throughput: scored (prompt, answer) tuples per second, per repeat."""
    n_tuples = 3 * len(records)  # edit, equiv and unrel of every record
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        score_records(editor.model, editor.tokenizer, records, batch_size=batch_size)
        rates.append(n_tuples / (time.perf_counter() - start))
    return rates


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
    parser.add_argument(
        "--side-path-chunk",
        type=int,
        default=5,
        help="training.side_path_chunk: backtracked records per side-path forward (0: all)",
    )
    parser.add_argument(
        "--pack-tokens",
        type=int,
        default=None,
        help="training.pack_tokens (default: the setup's); the padded step (0) is timed beside it",
    )
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
    job["training"]["side_path_chunk"] = args.side_path_chunk
    if args.pack_tokens is not None:
        job["training"]["pack_tokens"] = args.pack_tokens
    pack_tokens = int(job["training"]["pack_tokens"])
    model, tokenizer = load_model(job["model"])
    train_records = read_split(args.train_data)
    eval_records = read_split(args.eval_data)[: args.edits + 3]

    rows = []
    editor = load_editor(job, model, tokenizer, None)
    padded_job = {**job, "training": {**job["training"], "pack_tokens": 0}}
    padded = load_editor(padded_job, model, tokenizer, None)
    # The configured step and the padded one (today's before packing), alternated twice in this
    # process so that the ratio sees the same machine.
    steps, padded_steps, gflop, padded_gflop = [], [], [], []
    for _ in range(2):
        for arm, times, flops in ((editor, steps, gflop), (padded, padded_steps, padded_gflop)):
            arm_times, arm_gflop = time_training(
                arm, train_records, args.back_depth, args.train_steps
            )
            times += arm_times
            flops.append(arm_gflop)
    rows.append(("train_step_seconds", steps))
    rows.append(("train_step_seconds_padded", padded_steps))
    rows.append(
        (
            "train_step_packed_over_padded",
            [statistics.median(steps) / statistics.median(padded_steps)],
        )
    )
    rows.append(("train_step_gflop", gflop))
    rows.append(("train_step_gflop_padded", padded_gflop))
    # The floor under a step on this machine: its products at the rate of a lone product of
    # the shape that dominates them (the scored positions through an MLP matrix).
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    gemm = time_gemm(256, hidden, inner)
    rows.append(("gemm_gflop_per_second", gemm))
    rows.append(
        ("train_step_product_floor_seconds", [statistics.median(gflop) / statistics.median(gemm)])
    )
    edits, phases = time_edits(editor, eval_records)
    rows.append(("eval_edit_seconds_hiedit", edits))
    rows += [(f"eval_edit_{name}_seconds_hiedit", values) for name, values in phases.items()]
    dense_job = {**job, "variant": "rledit"}
    dense = load_editor(dense_job, model, tokenizer, None)
    rows.append(("eval_edit_seconds_rledit", time_edits(dense, eval_records)[0]))
    rows.append(("forward_floor_seconds", time_forwards(editor, eval_records)))
    batch_size = int(job["evaluation"]["batch_size"])
    rows.append(("scoring_tuples_per_second", time_scoring(editor, eval_records, batch_size)))

    common = {
        "model": args.model,
        "n_modules": len(editor.module_names),
        "k": editor.k,
        "back_depth": args.back_depth,
        "side_path_chunk": args.side_path_chunk,
        "pack_tokens": pack_tokens,
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
