"""Flat long streams: per-edit wall time and resident memory along a long sequential stream.

Runs the real stream (``hiedit.evaluation.stream.run_stream``) with a cheap editor that needs no
training: the untrained HiEdit networks with a set step size (``--lr``), on the first
``--n-edits`` records of an eval split. Writes the stream's ``per_edit.csv`` and a summary CSV
with, per window of ``--window`` edits, the median per-edit wall time and the resident memory,
the ratio of the last window's median to the first's (the target: within 10 %), the memory
growth, and the final O(T) scoring's throughput (scored tuples per second); with ``--plot``, the
report's long-stream panels of those windows. Times are this machine's: compare the ratio, not
the seconds, across machines. ``--edits-only`` runs the stream's edit loop without the scoring of
every record before and after it (``run_edits_only``), for per-edit costs alone: on 2 CPU cores
that scoring takes about as long as 20,000 edits.

A slower last window has two possible causes, the stream (something that grows with the edits) or
the host (a shared machine whose other tenants or clock changed). To tell them apart the benchmark
times a fixed host probe every ``--probe-every`` edits: a no-grad forward of the model on a fixed
token batch, whose cost does not depend on the edits made (the weights' values change, their
shapes do not). Each window reports the probe's median and its per-edit median in probe units
(``edit_over_probe``), and each timed phase of the edit (capture, route, update, commit); the
summary reports the last/first ratio of all three. The probe runs inside the stream's timed call,
so its measured duration is taken off the wall time of the edits of that call.

Example (the study's 20,000-record ZsRE eval split)::

    python benchmarks/long_stream.py --setup study --model smollm2-135m --lr 1e-4 \\
        --eval-data results/study/data/geofacts-zsre/eval.parquet --n-edits 20000 \\
        --out results/study/bench/long_stream/smollm2-135m.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hiedit.config import job_config, load_config, resolve_setup
from hiedit.data import read_split
from hiedit.editor import load_editor
from hiedit.evaluation.runinfo import cpu_name, library_version
from hiedit.evaluation.stream import StreamSettings, run_edits_only, run_stream
from hiedit.models import load_model
from hiedit.phases import EDIT_PHASES, phase_column

log = logging.getLogger("long_stream")


class HostProbe:
    """Wraps an editor; after every ``every``-th ``edit_records`` call, times the fixed probe.

    The probe runs inside the stream's timed call (the stream times the whole call), so the time
    it took, shared out over the call's records as the stream shares the call's time, is kept
    per edit index in ``overhead`` for the summary to take off.
    """

    def __init__(self, editor, model, every: int, repeats: int = 3, tokens: int = 16) -> None:
        self.editor, self.model, self.every, self.repeats = editor, model, every, repeats
        generator = torch.Generator().manual_seed(0)
        vocab = int(model.config.vocab_size)
        self.batch = torch.randint(0, vocab, (1, tokens), generator=generator)
        self.calls = 0
        self.edits = 0
        self.probed: list[int] = []  # index of the last edit of each probed call
        self.probe_seconds: list[float] = []  # each probe's median forward time
        self.overhead: dict[int, float] = {}  # edit index -> probe time inside its wall time

    def __getattr__(self, name: str):
        return getattr(self.editor, name)

    def time_probe(self) -> float:
        """The median of ``repeats`` timed no-grad forwards of the fixed batch."""
        times = []
        with torch.no_grad():
            for _ in range(self.repeats):
                tick = time.perf_counter()
                self.model(input_ids=self.batch)
                times.append(time.perf_counter() - tick)
        return statistics.median(times)

    def edit_records(self, records):
        step = self.editor.edit_records(records)
        self.calls += 1
        self.edits += len(records)
        if self.calls % self.every == 0:
            tick = time.perf_counter()
            self.probe_seconds.append(self.time_probe())
            spent = (time.perf_counter() - tick) / len(records)
            self.probed.append(self.edits - 1)
            for index in range(self.edits - len(records), self.edits):
                self.overhead[index] = spent
        return step


def window_summary(per_edit, window: int, probe: HostProbe | None = None) -> list[dict]:
    """Per window of ``window`` consecutive edits: the median wall time per edit, the largest
    resident memory, the median of each timed phase and, with ``probe``, the probe's median and
    the per-edit median in probe units (the probe's own time taken off the wall times)."""
    wall = per_edit["wall_seconds"]
    if probe is not None and probe.overhead:
        wall = wall - per_edit["index"].map(probe.overhead).fillna(0.0)
    phases = [phase for phase in EDIT_PHASES if phase_column(phase) in per_edit.columns]
    rows = []
    for start in range(0, len(per_edit), window):
        part = per_edit.iloc[start : start + window]
        row = {
            "first_edit": start,
            "last_edit": start + len(part) - 1,
            "median_edit_seconds": float(wall.iloc[start : start + window].median()),
            "rss_mib": float(part["rss_mib"].max()),
        }
        for phase in phases:
            row[f"median_{phase}_seconds"] = float(part[phase_column(phase)].median())
        if probe is not None:
            inside = [
                seconds
                for index, seconds in zip(probe.probed, probe.probe_seconds, strict=True)
                if start <= index < start + window
            ]
            row["probe_seconds"] = statistics.median(inside) if inside else float("nan")
            row["edit_over_probe"] = row["median_edit_seconds"] / row["probe_seconds"]
        rows.append(row)
    return rows


def last_over_first(windows: list[dict]) -> dict:
    """The last window's over the first window's value of each timed column: per-edit wall time
    as ``last_over_first``, the phases, the probe and per-edit time in probe units by their own
    names. A window without a probe (shorter than ``--probe-every``) is skipped for the latter."""
    ratios = {
        "last_over_first": windows[-1]["median_edit_seconds"] / windows[0]["median_edit_seconds"]
    }
    for column in windows[0]:
        if column == "median_edit_seconds" or not (
            column.startswith("median_") or column in ("probe_seconds", "edit_over_probe")
        ):
            continue
        values = [w[column] for w in windows if math.isfinite(w[column])]
        ratio = values[-1] / values[0] if len(values) >= 2 else float("nan")
        ratios[f"{column}_last_over_first"] = ratio
    return ratios


def plot_windows(per_edit, args: argparse.Namespace, variant: str) -> None:
    """The report's Figure 8 panels (window medians of wall time and RSS) for this stream."""
    from hiedit.reporting.long_stream import long_stream_figure, stream_windows

    run = per_edit.assign(model=args.model, dataset=args.dataset, variant=variant, seed=0)
    long_stream_figure(stream_windows(run, args.window), None, args.plot)


def plot_probe(windows: list[dict], out: str) -> None:
    """Each window's medians over the first window's (the first with a probe for the probe's
    columns): per-edit wall time, the host probe, per-edit time in probe units, and the phases."""
    import matplotlib.pyplot as plt

    from hiedit.reporting.figures import _save, _setup

    _setup()
    starts = [w["first_edit"] for w in windows]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    styles = {
        "median_edit_seconds": ("per-edit wall time", "black", 2.2),
        "probe_seconds": ("host probe (fixed forward)", "tab:red", 2.2),
        "edit_over_probe": ("per-edit time in probe units", "tab:blue", 2.2),
        **{
            f"median_{phase}_seconds": (f"phase: {phase}", color, 0.9)
            for phase, color in zip(
                EDIT_PHASES, ("tab:purple", None, "tab:orange", "tab:green"), strict=True
            )
            if phase != "route"  # well under a millisecond: its ratio is timer noise
        },
    }
    for column, (label, color, width) in styles.items():
        if column not in windows[0]:
            continue
        values = [w[column] for w in windows]
        first = next((v for v in values if math.isfinite(v)), float("nan"))
        ax.plot(starts, [v / first for v in values], label=label, color=color, linewidth=width)
    ax.axhline(1.10, color="grey", linestyle="--", linewidth=0.8, label="target: +10 %")
    ax.set_xlabel("first edit of the window")
    ax.set_ylabel("window median / first window's")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(alpha=0.3)
    _save(fig, out)


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
    parser.add_argument(
        "--probe-every",
        type=int,
        default=100,
        help="time the fixed host probe after every this many edit calls (0: no probe)",
    )
    parser.add_argument("--per-edit", help="where to write the stream's per_edit.csv")
    parser.add_argument(
        "--plot", help="where to write the report's long-stream figure of these windows (PNG)"
    )
    parser.add_argument(
        "--probe-plot",
        help="where to write the windows' medians relative to the first window's, the host probe"
        " beside the per-edit time (PNG)",
    )
    parser.add_argument(
        "--edits-only",
        action="store_true",
        help="run the stream's edit loop without its scoring before and after"
        " (hiedit.evaluation.stream.run_edits_only): per-edit costs only, no scoring throughput",
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
    probe = HostProbe(editor, model, args.probe_every) if args.probe_every > 0 else None
    if args.edits_only:
        per_edit = run_edits_only(probe or editor, model, tokenizer, records, settings)
        scoring_rate = float("nan")
    else:
        result = run_stream(probe or editor, model, tokenizer, records, settings, progress=True)
        per_edit = result.per_edit
        scoring_rate = 3 * len(records) / result.seconds["final_scoring"]
    windows = window_summary(per_edit, args.window, probe)
    summary = {
        "model": args.model,
        "n_edits": len(records),
        "lr": args.lr,
        "first_window_median_s": windows[0]["median_edit_seconds"],
        "last_window_median_s": windows[-1]["median_edit_seconds"],
        **last_over_first(windows),
        "rss_first_mib": windows[0]["rss_mib"],
        "rss_last_mib": windows[-1]["rss_mib"],
        "final_scoring_tuples_per_s": scoring_rate,
        "edits_only": args.edits_only,
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
        per_edit.to_csv(args.per_edit, index=False)
    if args.plot:
        plot_windows(per_edit, args, job["variant"])
    if args.probe_plot:
        plot_probe(windows, args.probe_plot)
    if probe is not None:
        log.info(
            "host probe last/first %.3f; per-edit time in probe units last/first %.3f",
            summary["probe_seconds_last_over_first"],
            summary["edit_over_probe_last_over_first"],
        )
    log.info(
        "last/first window median per-edit time %.3f; RSS %.0f -> %.0f MiB; scoring %.1f tuples/s",
        summary["last_over_first"],
        summary["rss_first_mib"],
        summary["rss_last_mib"],
        summary["final_scoring_tuples_per_s"],
    )


if __name__ == "__main__":
    main()
