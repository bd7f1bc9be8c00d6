"""One evaluation job end to end: load the model and editor, run the stream, write the results.

This is what ``python -m hiedit evaluate`` runs (the command only parses its arguments). The
result files and their columns are described in :mod:`hiedit.commands.evaluate`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiedit.config import JobConfig
from hiedit.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from hiedit.evaluation.stream import StreamResult

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "resume-state"
# Without --save-every the stream state is saved by a time budget (see StreamSettings): at most
# every this many seconds, and rarer when a save is slow. Ten minutes bounds what a crash costs
# while keeping the bytes written per stream small (a Llama-3-8B state is ~2.9 GB).
MIN_SAVE_INTERVAL_SECONDS = 600.0


@dataclass(frozen=True)
class EvaluationRequest:
    """What one evaluation job reads and where it writes."""

    job: JobConfig
    eval_data: Path
    out_dir: Path
    checkpoint: Path | None = None  # None: seeded untrained networks / a baseline's own state
    stats: Path | None = None  # a baseline's fitted statistic
    unedited: Path | None = None  # the unedited model's scores of the stream (shared)
    state_dir: Path | None = None  # default out_dir/resume-state
    save_every: int = 0  # 0: by time budget only
    keep_state: bool = False
    device: str | None = None
    progress: bool = True


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_eval_records(request: EvaluationRequest) -> list:
    """The eval split, checked to be of the job's dataset format."""
    from hiedit.data import read_split

    records = read_split(request.eval_data)
    expected = request.job.dataset.get("format")
    formats = {rec.format for rec in records}
    if expected is not None and formats - {expected}:
        raise ConfigError(
            f"{request.eval_data}: records of format {sorted(formats)}, but dataset "
            f"{request.job.dataset_name!r} is {expected!r}"
        )
    return records


def run_evaluation(request: EvaluationRequest) -> StreamResult:
    """Run the job's stream (resuming from its state folder) and write its result files."""
    import torch

    from hiedit.atomic import check_writable
    from hiedit.data import check_fits_model
    from hiedit.editors import build_editor
    from hiedit.evaluation.outputs import clear_results
    from hiedit.evaluation.stream import StreamSettings, run_stream
    from hiedit.models import load_model

    started = time.perf_counter()
    job = request.job
    # A failed rerun must not leave the previous run's files looking like its own.
    clear_results(request.out_dir)
    records = read_eval_records(request)
    state_dir = request.state_dir or request.out_dir / DEFAULT_STATE_DIR
    # A read-only or full results folder stops here, not after the unedited model is scored.
    check_writable(request.out_dir)
    check_writable(state_dir)
    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(job.seed)
    model, tokenizer = load_model(job.model, device=device)
    check_fits_model(tokenizer, records, model, str(request.eval_data))
    editor = build_editor(job, model, tokenizer, checkpoint=request.checkpoint, stats=request.stats)
    settings = StreamSettings.from_job_config(
        job, save_every=request.save_every, save_interval=_initial_interval(request)
    )
    fingerprint = {
        "job": job.to_dict(),
        "eval_data": sha256_of(request.eval_data),
        "checkpoint": sha256_of(request.checkpoint) if request.checkpoint else "none",
        "stats": sha256_of(request.stats) if request.stats else "none",
        "unedited": sha256_of(request.unedited) if request.unedited else "none",
    }
    unedited = load_unedited(request.unedited, records, job) if request.unedited else None
    result = run_stream(
        editor,
        model,
        tokenizer,
        records,
        settings,
        state_dir=state_dir,
        fingerprint=fingerprint,
        progress=request.progress,
        unedited=unedited,
    )
    write_results(request, result, device, fingerprint, time.perf_counter() - started)
    if not request.keep_state:
        result.remove_state()
    log.info("wrote %s", request.out_dir)
    return result


UNEDITED_KIND = "hiedit-unedited-scores"


def score_unedited(job: JobConfig, eval_data: Path, out: Path, device: str | None = None) -> None:
    """Score the unedited model on the job's stream once and save it for every variant's job."""
    import torch

    from hiedit.atomic import save_torch
    from hiedit.evaluation.metrics import score_records
    from hiedit.models import load_model

    records = read_eval_records(EvaluationRequest(job=job, eval_data=eval_data, out_dir=out.parent))
    stream = records[: job.evaluation.n_edits]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(job.model, device=device)
    scores = score_records(
        model, tokenizer, stream, batch_size=job.evaluation.batch_size, progress=True
    )
    state = {
        "kind": UNEDITED_KIND,
        "model": job.model_name,
        "records": [r.record_id for r in stream],
        "frame": {c: scores.frame[c].tolist() for c in scores.frame.columns},
        "reference": scores.reference.to_state(),
        "n_forwards": scores.n_forwards,
    }
    save_torch(out, state)
    log.info("scored the unedited model on %d records into %s", len(stream), out)


def load_unedited(path: Path, records, job: JobConfig):
    """The :class:`~hiedit.evaluation.metrics.Scores` saved by :func:`score_unedited`, checked
    to be of this model and exactly this stream."""
    import pandas as pd
    import torch

    from hiedit.errors import CheckpointMismatchError
    from hiedit.evaluation.metrics import Scores, UnrelReference

    state = torch.load(path, map_location="cpu", weights_only=True)
    stream = [r.record_id for r in records[: job.evaluation.n_edits]]
    if state.get("kind") != UNEDITED_KIND:
        raise CheckpointMismatchError(f"{path}: not an unedited-scores file")
    if state["model"] != job.model_name or state["records"] != stream:
        raise CheckpointMismatchError(
            f"{path}: scores of model {state['model']!r} on {len(state['records'])} records, "
            f"not of {job.model_name!r} on this stream of {len(stream)}"
        )
    reference = UnrelReference.from_state(state["reference"])
    return Scores(pd.DataFrame(state["frame"]), reference, int(state["n_forwards"]))


def _initial_interval(request: EvaluationRequest) -> float:
    # Count-based saves when asked for (tests, debugging); otherwise a time budget.
    return 0.0 if request.save_every else MIN_SAVE_INTERVAL_SECONDS


def long_table(job: JobConfig, result: StreamResult) -> pd.DataFrame:
    """``metrics_long.csv``: the final metrics and the learning-curve points (``curve_*``)."""
    import pandas as pd

    from hiedit.evaluation.outputs import long_rows

    identity = _identity(job)
    rows = long_rows(identity, result.n_edits, result.metrics)
    curve_metrics = [c for c in result.curve.columns if c not in ("n_edits", "n_scored")]
    for point in result.curve.to_dict("records"):
        # A metric undefined on a small sample (no eligible position) is left out, not NaN.
        values = {f"curve_{m}": point[m] for m in curve_metrics if point[m] == point[m]}
        rows += long_rows(identity, point["n_edits"], values)
    return pd.DataFrame(rows)


def _identity(job: JobConfig) -> dict[str, Any]:
    return {
        "model": job.model_name,
        "dataset": job.dataset_name,
        "variant": job.variant,
        "seed": job.seed,
    }


def write_results(
    request: EvaluationRequest,
    result: StreamResult,
    device: str,
    fingerprint: dict[str, str],
    seconds: float,
) -> None:
    """The five result files, all or nothing (``metrics.json`` last)."""
    from hiedit.evaluation.outputs import write_evaluation
    from hiedit.evaluation.runinfo import collect_runinfo

    job = request.job
    identity = _identity(job)
    seeds = {"seed": job.seed}
    if "init_seed" in job.model:
        seeds["model_init_seed"] = int(job.model["init_seed"])
    runinfo = collect_runinfo(
        seeds=seeds,
        device=device,
        extra={
            **identity,
            "n_edits": result.n_edits,
            "editor": str(request.checkpoint) if request.checkpoint else "no checkpoint",
            "checkpoint_sha256": fingerprint["checkpoint"],
            "eval_data_sha256": fingerprint["eval_data"],
            "stats_sha256": fingerprint["stats"],
            "resumed_from": result.resumed_from,
            "scoring_forwards": result.n_forwards,
            "state_saves": result.state_saves,
            "state_bytes_written": result.state_bytes,
            "seconds": {**result.seconds, "command": seconds},
        },
    )
    write_evaluation(
        request.out_dir,
        summary={
            **identity,
            "n_edits": result.n_edits,
            "num_pre": result.num_pre,
            "whole_stream_scored": result.whole_stream_scored,
            **result.metrics,
        },
        long=long_table(job, result),
        per_edit=result.per_edit,
        curve=result.curve,
        runinfo=runinfo,
    )
