"""CLI group ``train``: train the editor networks of one job over edit trajectories.

``python -m hiedit train --run-config JSON_OR_FILE --train-data TRAIN.parquet --out editor.pt
[--resume] [--log-curve CSV]`` trains the low-level network and (except for ``rledit``) the
router of the job's variant on the train split, writes the checkpoint ``--out`` (atomically; a
resumable one every ``training.checkpoint_every`` trajectories), the per-step loss log
(``--log-curve``, default ``editor.loss.csv`` next to the checkpoint) and ``<out>.runinfo.json``
(library versions, device, seed, wall time). An unfinished run keeps its resumable checkpoint at
``<out>.partial`` (never at ``--out``); with ``--resume`` that checkpoint, written under the same
configuration, is continued; another configuration is refused
with the differing keys listed.
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
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from hiedit.atomic import check_writable, write_json
    from hiedit.config import read_job_config
    from hiedit.data import check_fits_model, read_split
    from hiedit.editor import load_editor
    from hiedit.editor.step_search import search_step_sizes
    from hiedit.editor.trainer import train_editor
    from hiedit.evaluation.runinfo import collect_runinfo
    from hiedit.models import load_model

    job = read_job_config(args.run_config)
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
    editor = load_editor(job, model, tokenizer, None)
    fit = job.variant_spec.fit
    if fit == "step_search":
        search_step_sizes(
            editor,
            records,
            args.out,
            log_path=args.log_curve,
            validation_path=args.log_validation,
        )
        steps = []
    elif fit == "trajectories":
        steps = train_editor(
            editor,
            records,
            args.out,
            resume=args.resume,
            log_path=args.log_curve,
            validation_path=args.log_validation,
            progress=not args.no_progress,
        ).rows
    else:
        raise ConfigError(f"variant {job.variant!r} fits nothing: evaluate it with --untrained")
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
        },
    )
    write_json(Path(args.out).with_name(Path(args.out).name + ".runinfo.json"), info, default=str)
    log.info("wrote %s (%.1f s)", args.out, seconds)
    return 0
