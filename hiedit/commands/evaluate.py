"""CLI group ``evaluate``: run the sequential edit stream of one job, and gather the tidy metrics.

``python -m hiedit evaluate --run-config JSON_OR_FILE --eval-data EVAL.parquet
(--checkpoint editor.pt | --untrained) --out-dir DIR [--resume-dir DIR]`` writes into ``DIR``:

* ``metrics.json``: ``model, dataset, variant, seed, n_edits, num_pre`` and one key per metric
  (flat): ``efficacy, generalization, specificity, specificity_agreement`` (+ ``*_prob`` for
  CounterFact), ``retention_efficacy, retention_generalization, retention_specificity``, and the
  unedited model's values on the same records as ``unedited_<metric>`` (``unedited_efficacy``,
  …, ``unedited_retention_*``; no ``unedited_specificity_agreement``, which is 1 by definition);
* ``metrics_long.csv``: columns ``model, dataset, variant, seed, n_edits, metric, value``; the
  metrics above at ``n_edits`` = the stream length, and the learning-curve points as
  ``curve_<metric>`` at each checkpoint's ``n_edits``;
* ``per_edit.csv``: ``index, record_id, relation, selected`` (';'-joined module names),
  ``n_selected, seconds`` (the editor's), ``wall_seconds``, the editor's phases
  ``capture_seconds, route_seconds, update_seconds, commit_seconds``, the record's metric values
  after the stream and its ``unedited_*`` values;
* ``curve.csv``: ``n_edits, n_scored`` and the sample's metrics per checkpoint;
* ``runinfo.json``: library versions, Python, platform, device, seeds, timings.

``metrics.json`` appears only when every file has been written. The stream saves its state in
``--resume-dir`` (default ``DIR/resume-state``); rerunning the same command after an interruption
resumes there, and the state is removed after success.

``python -m hiedit evaluate gather --out TABLE.csv FILES...`` concatenates ``metrics_long.csv``
files into one table, validating each (errors name the file).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

from hiedit.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "resume-state"
DEFAULT_SAVES_PER_STREAM = 20


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
        "--untrained", action="store_true", help="use seeded untrained editor networks"
    )
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
        help=f"save the stream state every N edits (default: about {DEFAULT_SAVES_PER_STREAM} "
        "saves per stream; always at curve checkpoints)",
    )
    parser.add_argument("--keep-state", action="store_true", help="keep the state after success")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_dispatch)

    sub = parser.add_subparsers(dest="command", metavar="{gather}")
    gather = sub.add_parser(
        "gather",
        help="concatenate metrics_long.csv files into one validated table",
        description="Concatenate tidy metrics_long.csv files (columns model, dataset, variant, "
        "seed, n_edits, metric, value) into --out, validating every file: exact columns, integer "
        "seed/n_edits, values in [0, 1], no key repeated across files. Errors name the file.",
    )
    gather.add_argument("--out", required=True, help="output CSV (written atomically)")
    gather.add_argument("files", nargs="+", metavar="FILES", help="metrics_long.csv files")


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "command", None) == "gather":
        return run_gather(args)
    return run_evaluate(args)


def run_gather(args: argparse.Namespace) -> int:
    from hiedit.evaluation.outputs import gather, write_table

    table = gather(args.files)
    write_table(args.out, table)
    log.info("gathered %d rows from %d files into %s", len(table), len(args.files), args.out)
    return 0


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise ConfigError(f"--checkpoint {args.checkpoint}: file not found")
    if args.save_every is not None and args.save_every < 1:
        raise ConfigError(f"--save-every must be a positive integer, got {args.save_every}")


def _job_fields(job: dict[str, Any]) -> None:
    for key in ("model_name", "model", "dataset_name", "variant", "seed", "evaluation"):
        if key not in job:
            raise ConfigError(f"--run-config: key {key!r} is missing")
    for key in ("n_edits", "num_pre", "n_curve_points", "curve_sample", "batch_size"):
        if key not in job["evaluation"]:
            raise ConfigError(f"--run-config: key 'evaluation.{key}' is missing")


def _remove_state(folder: Path) -> None:
    from hiedit.evaluation.stream import PROGRESS_FILE

    # Only what the stream wrote: a user-given folder may hold other things.
    (folder / PROGRESS_FILE).unlink(missing_ok=True)
    for path in folder.glob("editor-*.pt"):
        path.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(folder)


def run_evaluate(args: argparse.Namespace) -> int:
    _check_args(args)
    started = time.perf_counter()
    import pandas as pd
    import torch

    from hiedit.config import read_job_config
    from hiedit.data import read_split
    from hiedit.editor import load_editor
    from hiedit.evaluation.outputs import clear_results, long_rows, write_evaluation
    from hiedit.evaluation.runinfo import collect_runinfo
    from hiedit.evaluation.stream import StreamSettings, run_stream
    from hiedit.models import load_model

    job = read_job_config(args.run_config)
    _job_fields(job)
    seed = int(job["seed"])
    out_dir = Path(args.out_dir)
    # A failed rerun must not leave the previous run's files looking like its own.
    clear_results(out_dir)

    records = read_split(args.eval_data)
    expected_format = job.get("dataset", {}).get("format")
    formats = {rec.format for rec in records}
    if expected_format is not None and formats - {expected_format}:
        raise ConfigError(
            f"{args.eval_data}: records of format {sorted(formats)}, but dataset "
            f"{job['dataset_name']!r} is {expected_format!r}"
        )

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _seed_everything(seed)
    model, tokenizer = load_model(job["model"], device=device)
    editor = load_editor(job, model, tokenizer, args.checkpoint)

    n_stream = min(int(job["evaluation"]["n_edits"]), len(records))
    save_every = args.save_every or max(1, -(-n_stream // DEFAULT_SAVES_PER_STREAM))
    settings = StreamSettings.from_job_config(job, save_every=save_every)
    state_dir = Path(args.resume_dir) if args.resume_dir else out_dir / DEFAULT_STATE_DIR
    fingerprint = {
        "job": job,
        "eval_data": _sha256(args.eval_data),
        "checkpoint": _sha256(args.checkpoint) if args.checkpoint else "untrained",
    }
    result = run_stream(
        editor,
        model,
        tokenizer,
        records,
        settings,
        state_dir=state_dir,
        fingerprint=fingerprint,
        progress=not args.no_progress,
    )

    identity = {
        "model": job["model_name"],
        "dataset": job["dataset_name"],
        "variant": job["variant"],
        "seed": seed,
    }
    rows = long_rows(identity, result.n_edits, result.metrics)
    curve_metrics = [c for c in result.curve.columns if c not in ("n_edits", "n_scored")]
    for point in result.curve.to_dict("records"):
        values = {f"curve_{name}": point[name] for name in curve_metrics}
        rows += long_rows(identity, point["n_edits"], values)
    seeds = {"seed": seed}
    if "init_seed" in job["model"]:
        seeds["model_init_seed"] = int(job["model"]["init_seed"])
    summary = {**identity, "n_edits": result.n_edits, "num_pre": result.num_pre, **result.metrics}
    runinfo = collect_runinfo(
        seeds=seeds,
        device=device,
        extra={
            **identity,
            "n_edits": result.n_edits,
            "editor": "checkpoint" if args.checkpoint else "untrained",
            "checkpoint_sha256": fingerprint["checkpoint"],
            "eval_data_sha256": fingerprint["eval_data"],
            "resumed_from": result.resumed_from,
            "scoring_forwards": result.n_forwards,
            "seconds": {**result.seconds, "command": time.perf_counter() - started},
        },
    )
    write_evaluation(
        out_dir,
        summary=summary,
        long=pd.DataFrame(rows),
        per_edit=result.per_edit,
        curve=result.curve,
        runinfo=runinfo,
    )
    if not args.keep_state:
        _remove_state(state_dir)
    log.info("wrote %s", out_dir)
    return 0
