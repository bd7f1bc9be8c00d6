"""CLI group ``evaluate``: run the sequential edit stream of one job, and gather the tidy metrics.

``python -m hiedit evaluate --run-config JSON_OR_FILE --eval-data EVAL.parquet
(--checkpoint editor.pt | --untrained) --out-dir DIR [--resume-dir DIR]`` writes into ``DIR``:

* ``metrics.json``: ``model, dataset, variant, seed, n_edits, num_pre, whole_stream_scored``
  (the records the whole-stream metrics average over: all, or evaluation.final_sample) and one
  key per metric
  (flat): ``efficacy, generalization, specificity, specificity_agreement`` (+ ``*_prob`` for
  CounterFact), ``retention_efficacy, retention_generalization, retention_specificity``, and the
  unedited model's values on the same records as ``unedited_<metric>`` (``unedited_efficacy``,
  …, ``unedited_retention_*``; no ``unedited_specificity_agreement``, which is 1 by definition);
* ``metrics_long.csv``: columns ``model, dataset, variant, seed, n_edits, metric, value``; the
  metrics above at ``n_edits`` = the stream length, and the learning-curve points as
  ``curve_<metric>`` at each checkpoint's ``n_edits``;
* ``per_edit.csv``: ``index, record_id, relation, selected`` (';'-joined module names),
  ``turn`` (the edit_records call), ``n_selected, seconds`` (the editor's), ``wall_seconds``,
  ``rss_mib`` (resident memory after the edit), the editor's phases
  ``capture_seconds, route_seconds, update_seconds, commit_seconds``, the record's metric values
  after the stream and its ``unedited_*`` values;
* ``curve.csv``: ``n_edits, n_scored`` and the sample's metrics per checkpoint;
* ``runinfo.json``: library versions, Python, platform, device, seeds, timings.

``metrics.json`` appears only when every file has been written. The stream saves its state in
``--resume-dir`` (default ``DIR/resume-state``); rerunning the same command after an interruption
resumes there, and the state is removed after success. The work itself is
:func:`hiedit.evaluation.job.run_evaluation`.

``python -m hiedit evaluate gather --out TABLE.csv FILES...`` concatenates ``metrics_long.csv``
files into one table, validating each (errors name the file).

``python -m hiedit evaluate progress STATE_DIR --out-dir DIR`` reads a running or interrupted
stream's state folder (nothing there is changed) and writes what it holds so far: ``per_edit.csv``
(the edit log of the edits made: no metric column yet), ``curve.csv`` (the checkpoints already
scored) and ``progress.json`` (``done``, ``total``, when the state was saved).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hiedit.errors import ConfigError
from hiedit.evaluation.job import DEFAULT_STATE_DIR

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="run the sequential edit stream of one job; gather metric tables",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-config", help="job configuration: a JSON string or a JSON/YAML file")
    parser.add_argument("--eval-data", help="eval split (.parquet, from `hiedit data prepare`)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="trained editor checkpoint (editor.pt)")
    source.add_argument(
        "--untrained",
        action="store_true",
        help="no checkpoint: seeded untrained networks, or a baseline editor that fits nothing",
    )
    parser.add_argument("--stats", help="a baseline's fitted statistic (e.g. a key covariance)")
    parser.add_argument("--out-dir", help="result folder (created if missing)")
    parser.add_argument(
        "--resume-dir",
        help=f"folder for the periodic stream state (default OUT_DIR/{DEFAULT_STATE_DIR}); "
        "an unfinished run's state there is resumed",
    )
    parser.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="save the stream state every N edits (default: by a time budget, at most every "
        "10 minutes and at most 5 %% of the stream's time; always after the last edit)",
    )
    parser.add_argument("--keep-state", action="store_true", help="keep the state after success")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_dispatch)

    parser.add_argument(
        "--unedited",
        help="the unedited model's scores of this stream (from `evaluate unedited`), shared by "
        "every variant instead of scoring the unedited model in each job",
    )

    sub = parser.add_subparsers(dest="command", metavar="{gather,unedited,progress}")
    unedited = sub.add_parser(
        "unedited",
        help="score the unedited model on a job's stream once (shared by every variant)",
        description="Score the unedited model on the first evaluation.n_edits records of "
        "--eval-data (the stream every variant of the job's model and dataset edits) and save "
        "the scores to --out, for `evaluate --unedited`.",
    )
    unedited.add_argument("--run-config", required=True, help="a job configuration (JSON or file)")
    unedited.add_argument("--eval-data", required=True, help="eval split (.parquet)")
    unedited.add_argument("--out", required=True, help="scores file (.pt, written atomically)")
    unedited.add_argument("--threads", type=int, help="torch CPU threads")
    unedited.add_argument("--device", help="torch device (default: cuda if available)")
    gather = sub.add_parser(
        "gather",
        help="concatenate metrics_long.csv files into one validated table",
        description="Concatenate tidy metrics_long.csv files (columns model, dataset, variant, "
        "seed, n_edits, metric, value) into --out, validating every file: exact columns, integer "
        "seed/n_edits, rates in [0, 1] (KL metrics: non-negative), no key repeated across "
        "files. Errors name the file.",
    )
    gather.add_argument("--out", required=True, help="output CSV (written atomically)")
    gather.add_argument("files", nargs="+", metavar="FILES", help="metrics_long.csv files")
    saved = sub.add_parser(
        "progress",
        help="write the per-edit log and curve points a stream's state folder holds so far",
        description="Read the state folder of a running or interrupted stream (changing "
        "nothing there) and write into --out-dir what it holds up to its last save: "
        "per_edit.csv (the edit log: times, memory, selected modules; the metric columns come "
        "only with the final scoring), curve.csv (the learning-curve points scored so far) and "
        "progress.json (done, total, saved_at).",
    )
    saved.add_argument("state_dir", metavar="STATE_DIR", help="the stream's --resume-dir")
    saved.add_argument("--out-dir", required=True, help="folder for the three files")


def _dispatch(args: argparse.Namespace) -> int:
    command = getattr(args, "command", None)
    if command == "gather":
        return run_gather(args)
    if command == "unedited":
        return run_unedited(args)
    if command == "progress":
        return run_progress(args)
    return run_evaluate(args)


def run_unedited(args: argparse.Namespace) -> int:
    import torch

    from hiedit.config import read_job_config
    from hiedit.evaluation.job import score_unedited

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    score_unedited(
        read_job_config(args.run_config), Path(args.eval_data), Path(args.out), args.device
    )
    return 0


def run_gather(args: argparse.Namespace) -> int:
    from hiedit.evaluation.outputs import gather, write_table

    table = gather(args.files)
    write_table(args.out, table)
    log.info("gathered %d rows from %d files into %s", len(table), len(args.files), args.out)
    return 0


def run_progress(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from hiedit.atomic import json_writer, write_all_or_nothing
    from hiedit.evaluation.outputs import CURVE_FILE, PER_EDIT_FILE, csv_writer
    from hiedit.evaluation.stream import read_saved_progress

    progress = read_saved_progress(args.state_dir)
    saved_at = datetime.fromtimestamp(progress.saved_at, tz=timezone.utc)
    summary = {
        "state_dir": str(args.state_dir),
        "done": progress.done,
        "total": progress.total,
        "curve_points": len(progress.curve),
        "saved_at": saved_at.isoformat(timespec="seconds"),
    }
    write_all_or_nothing(
        args.out_dir,
        {
            PER_EDIT_FILE: csv_writer(progress.per_edit),
            CURVE_FILE: csv_writer(progress.curve),
            "progress.json": json_writer(summary),
        },
    )
    log.info(
        "%s: %d of %d edits, %d curve points, saved %s",
        args.state_dir,
        progress.done,
        progress.total,
        len(progress.curve),
        summary["saved_at"],
    )
    return 0


def _check_args(args: argparse.Namespace) -> None:
    missing = [
        flag
        for flag, value in (
            ("--run-config", args.run_config),
            ("--eval-data", args.eval_data),
            ("--out-dir", args.out_dir),
        )
        if not value
    ]
    if missing:
        raise ConfigError(f"evaluate: missing {', '.join(missing)}")
    if not args.checkpoint and not args.untrained:
        raise ConfigError("evaluate: give --checkpoint FILE or --untrained")
    files = (
        ("--checkpoint", args.checkpoint),
        ("--stats", args.stats),
        ("--unedited", args.unedited),
    )
    for flag, value in files:
        if value and not Path(value).is_file():
            raise ConfigError(f"{flag} {value}: file not found")
    if args.save_every is not None and args.save_every < 1:
        raise ConfigError(f"--save-every must be a positive integer, got {args.save_every}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be positive, got {args.threads}")


def run_evaluate(args: argparse.Namespace) -> int:
    _check_args(args)
    import torch

    from hiedit.config import read_job_config
    from hiedit.evaluation.job import EvaluationRequest, run_evaluation

    job = read_job_config(args.run_config)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_evaluation(
        EvaluationRequest(
            job=job,
            eval_data=Path(args.eval_data),
            out_dir=Path(args.out_dir),
            checkpoint=Path(args.checkpoint) if args.checkpoint else None,
            stats=Path(args.stats) if args.stats else None,
            unedited=Path(args.unedited) if args.unedited else None,
            state_dir=Path(args.resume_dir) if args.resume_dir else None,
            save_every=args.save_every or 0,
            keep_state=args.keep_state,
            device=args.device,
            progress=not args.no_progress,
        )
    )
    return 0
