"""CLI group ``train``: fit the editor of one job (train its networks, or search a baseline).

``python -m hiedit train --run-config JSON_OR_FILE --train-data TRAIN.parquet --out editor.pt
[--resume] [--log-curve CSV]`` trains the low-level network and (except for ``rledit``) the
router of the job's variant on the train split, writes the checkpoint ``--out`` (atomically; a
resumable one every ``training.checkpoint_every`` trajectories), the per-step loss log
(``--log-curve``, default ``editor.loss.csv`` next to the checkpoint) and ``<out>.runinfo.json``
(library versions, device, seed, wall time). An unfinished run keeps its resumable checkpoint at
``<out>.partial`` (never at ``--out``); with ``--resume`` that checkpoint, written under the same
configuration, is continued; another configuration is refused
with the differing keys listed.

A baseline variant whose section has a ``search`` grid is fitted here too: its hyperparameters
are chosen on the validation slice of the train split (:mod:`hiedit.baselines.tuning`); ``--out``
then holds the chosen values, ``--log-validation`` every candidate's metrics, and ``--stats`` is
the fitted statistic the editor needs, if any.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from hiedit.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the editor networks of one job (checkpoint + loss log)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run-config", required=True, help="job configuration: a JSON string or a JSON/YAML file"
    )
    parser.add_argument(
        "--train-data", required=True, help="train split (.parquet, from `hiedit data prepare`)"
    )
    parser.add_argument("--out", required=True, help="checkpoint path (editor.pt)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run whose checkpoint is <out>.partial",
    )
    parser.add_argument("--log-curve", help="per-step loss CSV (default: <out stem>.loss.csv)")
    parser.add_argument(
        "--log-validation",
        help="validation CSV (default: <out stem>.validation.csv; written when the job has a "
        "validation slice)",
    )
    parser.add_argument(
        "--stats", help="a baseline's fitted statistic (e.g. the key statistic of MEMIT)"
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from hiedit.atomic import check_writable, write_json
    from hiedit.baselines.tuning import grid_search
    from hiedit.config import read_job_config
    from hiedit.data import check_fits_model, read_split
    from hiedit.editor import load_editor
    from hiedit.editor.step_search import search_step_sizes
    from hiedit.editor.trainer import train_editor
    from hiedit.evaluation.runinfo import collect_runinfo
    from hiedit.models import load_model

    job = read_job_config(args.run_config)
    fit = job.variant_spec.fit_under(job.baselines)
    if fit is None:
        raise ConfigError(f"variant {job.variant!r} fits nothing: evaluate it with --untrained")
    if args.stats is not None and not Path(args.stats).is_file():
        raise ConfigError(f"--stats {args.stats}: file not found")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    records = read_split(args.train_data)
    # A read-only or full folder stops here, not at the first checkpoint hours later.
    check_writable(Path(args.out).parent)
    if args.log_curve:
        check_writable(Path(args.log_curve).parent)
    started = time.perf_counter()
    model, tokenizer = load_model(job.model, device=device)
    check_fits_model(tokenizer, records, model, args.train_data)
    extra = {}
    if fit == "grid_search":
        searched = grid_search(
            job,
            model,
            tokenizer,
            records,
            args.out,
            stats=args.stats,
            validation_path=args.log_validation,
            log_path=args.log_curve,
            resume=args.resume,
        )
        steps = []
        extra = {
            "chosen": searched.chosen,
            "search_values": searched.best.values,
            "validation_score": searched.best_score,
            "candidates": len(searched.rows),
        }
    elif fit == "step_search":
        search_step_sizes(
            load_editor(job, model, tokenizer, None),
            records,
            args.out,
            log_path=args.log_curve,
            validation_path=args.log_validation,
        )
        steps = []
    else:
        steps = train_editor(
            load_editor(job, model, tokenizer, None),
            records,
            args.out,
            resume=args.resume,
            log_path=args.log_curve,
            validation_path=args.log_validation,
            progress=not args.no_progress,
        ).rows
    seconds = time.perf_counter() - started
    info = collect_runinfo(
        seeds={"seed": job.seed},
        device=device,
        extra={
            "variant": job.variant,
            "train_records": len(records),
            "steps": len(steps),
            "wall_seconds": round(seconds, 3),
            "mean_step_seconds": (sum(r["seconds"] for r in steps) / len(steps)) if steps else None,
            **extra,
        },
    )
    write_json(Path(args.out).with_name(Path(args.out).name + ".runinfo.json"), info, default=str)
    log.info("wrote %s (%.1f s)", args.out, seconds)
    return 0
