"""The sequential evaluation protocol: edit a stream of records one by one, then score it once.

Order of work (method §8):

1. Score the *unedited* model on all ``T`` records (its metrics, and its ``unrel`` predictions
   that ``specificity_agreement`` compares against).
2. For each record in order: ``editor.edit_records([record])`` captures, routes, computes and
   commits the edit in place. Nothing is ever rolled back.
3. At ``n_curve_points`` checkpoints ``t`` (evenly spaced, the last one at ``T``) score a fixed
   seeded sample of ``min(curve_sample, t)`` of the edits made so far; the sample at ``T`` is
   read from step 4 instead of being scored again.
4. After the stream, score all ``T`` records once, batched (O(T) forwards in all). **Retention**
   is the mean over the first ``min(num_pre, T)`` records of that final scoring.

With a state folder the stream saves the editor state, the progress (per-edit log, curve points,
unedited scores) and the random number generator states every ``save_every`` edits and at every
curve checkpoint; a rerun with the same inputs resumes after the last save and ends with metrics
identical to an uninterrupted run. A state folder written for other inputs is refused.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from hiedit.errors import CheckpointMismatchError
from hiedit.evaluation.metrics import (
    AGREEMENT,
    ROLE_METRICS,
    Scores,
    metric_columns,
    prefixed,
    score_records,
    summarize,
)
from hiedit.phases import phase_column

if TYPE_CHECKING:
    import pandas as pd

    from hiedit.data.records import EditRecord

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.pt"
STATE_VERSION = 1
RETENTION_METRICS = tuple(ROLE_METRICS.values())


class SequentialEditor(Protocol):
    """What the stream needs from an editor (``hiedit.editor.HiEditor`` provides it)."""

    module_names: Sequence[str]

    def edit_records(self, records: Sequence[EditRecord]) -> Any:
        """Edit and commit in place; return an object with ``selected`` and ``seconds``."""

    def save_state(self, path: str | os.PathLike[str]) -> None: ...

    def load_state(self, path: str | os.PathLike[str]) -> None: ...


@dataclass(frozen=True)
class StreamSettings:
    """The ``evaluation`` section's stream parameters plus the run's seed and save interval."""

    n_edits: int
    num_pre: int
    n_curve_points: int
    curve_sample: int
    batch_size: int
    seed: int
    save_every: int = 0  # 0: save state only at curve checkpoints
    max_length: int | None = None

    @classmethod
    def from_job_config(cls, job: Mapping[str, Any], *, save_every: int = 0) -> StreamSettings:
        """Settings from a job configuration (``hiedit.config.job_config``)."""
        evaluation = job["evaluation"]
        return cls(
            n_edits=int(evaluation["n_edits"]),
            num_pre=int(evaluation["num_pre"]),
            n_curve_points=int(evaluation["n_curve_points"]),
            curve_sample=int(evaluation["curve_sample"]),
            batch_size=int(evaluation["batch_size"]),
            seed=int(job["seed"]),
            save_every=int(save_every),
        )

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change results (``save_every`` does not)."""
        return {
            "n_edits": self.n_edits,
            "num_pre": self.num_pre,
            "n_curve_points": self.n_curve_points,
            "curve_sample": self.curve_sample,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "max_length": self.max_length,
        }


@dataclass
class StreamResult:
    """Everything one stream produced.

    ``metrics``: the edited model's summary after the stream (``efficacy``, …), ``retention_*``
    and the unedited model's ``unedited_*`` on the same records; ``per_edit``: one row per edit
    (index, record_id, relation, selected, seconds, wall_seconds, ``<phase>_seconds`` where the
    editor reports its phases, the record's metric values after
    the stream, and its ``unedited_*`` values); ``curve``: one row per checkpoint (n_edits,
    n_scored, metrics of the sample); ``n_forwards``: scoring forwards (the editor's excluded);
    ``seconds``: unedited_scoring, final_scoring, edits (sum of the editor's step times) and
    this_process (wall time of this call, which after a resume covers only the remainder).
    """

    n_edits: int
    num_pre: int
    metrics: dict[str, float]
    per_edit: pd.DataFrame
    curve: pd.DataFrame
    n_forwards: int
    resumed_from: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def curve_checkpoints(n_edits: int, n_points: int) -> list[int]:
    """``n_points`` evenly spaced stream lengths ending at ``n_edits`` (fewer if the stream is short)."""
    if n_edits < 1 or n_points < 1:
        return []
    return sorted({max(1, -(-n_edits * j // n_points)) for j in range(1, n_points + 1)})


def curve_sample_indices(n_done: int, size: int, seed: int) -> list[int]:
    """A fixed seeded sample (sorted) of ``min(size, n_done)`` indices among the first ``n_done``."""
    import numpy as np

    rng = np.random.default_rng([seed, n_done])
    picked = rng.choice(n_done, size=min(size, n_done), replace=False)
    return sorted(int(i) for i in picked)


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _differences(expected: Any, found: Any, prefix: str = "") -> list[str]:
    if isinstance(expected, Mapping) and isinstance(found, Mapping):
        keys = sorted(set(expected) | set(found), key=str)
        out: list[str] = []
        for key in keys:
            out += _differences(expected.get(key), found.get(key), f"{prefix}{key}.")
        return out
    return [] if expected == found else [prefix.rstrip(".")]


class _StateFolder:
    """Periodic saves of the editor and the stream's progress in one folder.

    The editor state is written under a name that carries the edit count, then ``progress.pt``
    (which names it) is replaced; a crash between the two leaves the previous pair intact.
    """

    def __init__(self, folder: str | os.PathLike[str], fingerprint: Mapping[str, Any]):
        self.folder = Path(folder)
        self.fingerprint = dict(fingerprint)

    def load(self) -> dict[str, Any] | None:
        import torch

        path = self.folder / PROGRESS_FILE
        if not path.is_file():
            return None
        progress = torch.load(path, map_location="cpu", weights_only=True)
        if progress.get("version") != STATE_VERSION:
            raise CheckpointMismatchError(
                f"{path}: state version {progress.get('version')}, expected {STATE_VERSION}"
            )
        differ = _differences(self.fingerprint, progress["fingerprint"])
        if differ:
            raise CheckpointMismatchError(
                f"{path}: saved by a run with different inputs ({', '.join(differ)}); "
                "use another state folder or delete this one"
            )
        return progress

    def save(self, editor: SequentialEditor, progress: dict[str, Any]) -> None:
        import torch

        from hiedit.atomic import atomic_path

        self.folder.mkdir(parents=True, exist_ok=True)
        editor_name = f"editor-{progress['done']:08d}.pt"
        with atomic_path(self.folder / editor_name) as tmp:
            editor.save_state(tmp)
        progress = {
            **progress,
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "editor_state": editor_name,
        }
        with atomic_path(self.folder / PROGRESS_FILE) as tmp:
            torch.save(progress, tmp)
        for old in self.folder.glob("editor-*.pt"):
            if old.name != editor_name:
                old.unlink(missing_ok=True)
        log.debug("saved stream state after %d edits in %s", progress["done"], self.folder)


def _score_frame(scores: Scores) -> dict[str, list[float]]:
    # Plain lists: the progress file is loaded with ``weights_only=True``.
    return {column: scores.frame[column].tolist() for column in scores.frame.columns}


def run_stream(
    editor: SequentialEditor,
    model,
    tokenizer,
    records: Sequence[EditRecord],
    settings: StreamSettings,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> StreamResult:
    """Run the sequential protocol (module docstring) on the first ``settings.n_edits`` records.

    ``state_dir``: where periodic state is kept and resumed from; ``fingerprint``: what else
    identifies the inputs (job configuration, data, checkpoint) so that a state folder written
    for something else is refused rather than silently continued.
    """
    import pandas as pd

    started = time.perf_counter()
    if settings.n_edits < 1:
        raise ValueError(f"n_edits must be positive, got {settings.n_edits}")
    if len(records) < settings.n_edits:
        log.warning(
            "the eval split has %d records; the stream uses all of them instead of n_edits = %d",
            len(records),
            settings.n_edits,
        )
    stream = list(records[: settings.n_edits])
    total = len(stream)
    if total == 0:
        raise ValueError("no records to edit")
    num_pre = min(settings.num_pre, total)
    checkpoints = curve_checkpoints(total, settings.n_curve_points)
    data_format = stream[0].format
    columns = metric_columns(data_format)
    score = _scorer(model, tokenizer, settings, progress)

    folder = None
    saved = None
    if state_dir is not None:
        full_fingerprint = {
            "settings": settings.fingerprint(),
            "records": [rec.record_id for rec in stream],
            "inputs": dict(fingerprint or {}),
        }
        folder = _StateFolder(state_dir, full_fingerprint)
        saved = folder.load()

    if saved is not None:
        editor.load_state(folder.folder / saved["editor_state"])
        _set_rng_state(saved["rng"])
        done = int(saved["done"])
        unedited_table = saved["unedited"]
        unedited_predictions = saved["unedited_predictions"]
        edit_log = list(saved["per_edit"])
        curve_rows = list(saved["curve"])
        n_forwards = int(saved["n_forwards"])
        unedited_seconds = float(saved["unedited_seconds"])
        log.info("resuming the stream after %d of %d edits from %s", done, total, folder.folder)
    else:
        unedited = score(stream, None, "scoring unedited")
        unedited_seconds = time.perf_counter() - started
        unedited_table = _score_frame(unedited)
        unedited_predictions = unedited.predictions
        done, edit_log, curve_rows, n_forwards = 0, [], [], unedited.n_forwards

    def snapshot() -> dict[str, Any]:
        return {
            "done": done,
            "per_edit": edit_log,
            "curve": curve_rows,
            "unedited": unedited_table,
            "unedited_predictions": unedited_predictions,
            "n_forwards": n_forwards,
            "unedited_seconds": unedited_seconds,
            "rng": _rng_state(),
        }

    if folder is not None and saved is None:
        folder.save(editor, snapshot())
    resumed_from = done

    bar = tqdm(total=total, initial=done, desc="editing", unit="edit", disable=not progress)
    try:
        for index in range(done, total):
            record = stream[index]
            tick = time.perf_counter()
            step = editor.edit_records([record])
            wall = time.perf_counter() - tick
            edit_log.append(
                {
                    "index": index,
                    "record_id": record.record_id,
                    "relation": record.relation,
                    "selected": ";".join(step.selected),
                    "n_selected": len(step.selected),
                    "seconds": float(step.seconds),
                    "wall_seconds": wall,
                    # Editors that time their phases (HiEditor does) get one column per phase.
                    **{
                        phase_column(name): float(value)
                        for name, value in getattr(step, "phases", {}).items()
                    },
                }
            )
            done = index + 1
            bar.update(1)
            if done in checkpoints and done < total:
                sample = curve_sample_indices(done, settings.curve_sample, settings.seed)
                scores = score(
                    [stream[i] for i in sample],
                    [unedited_predictions[i] for i in sample],
                    f"curve at {done}",
                    bar=False,  # short, and would interleave with the stream's bar
                )
                n_forwards += scores.n_forwards
                curve_rows.append(
                    {"n_edits": done, "n_scored": len(sample), **summarize(scores.frame, columns)}
                )
            periodic = settings.save_every > 0 and done % settings.save_every == 0
            # Also after the last edit: a crash in the final scoring then redoes no edit.
            if folder is not None and (periodic or done in checkpoints):
                folder.save(editor, snapshot())
    finally:
        bar.close()
    edited_at = time.perf_counter()

    final = score(stream, unedited_predictions, "scoring edited")
    n_forwards += final.n_forwards
    if total in checkpoints:
        sample = curve_sample_indices(total, settings.curve_sample, settings.seed)
        curve_rows.append(
            {
                "n_edits": total,
                "n_scored": len(sample),
                **summarize(final.frame.iloc[sample], columns),
            }
        )

    unedited_frame = pd.DataFrame(unedited_table)
    unedited_columns = [c for c in columns if c != AGREEMENT]
    metrics = summarize(final.frame, columns)
    metrics.update(prefixed(summarize(final.frame.iloc[:num_pre], RETENTION_METRICS), "retention_"))
    metrics.update(prefixed(summarize(unedited_frame, unedited_columns), "unedited_"))
    metrics.update(
        prefixed(summarize(unedited_frame.iloc[:num_pre], RETENTION_METRICS), "unedited_retention_")
    )

    per_edit = pd.DataFrame(edit_log)
    per_edit = pd.concat(
        [
            per_edit,
            final.frame.reset_index(drop=True),
            unedited_frame[unedited_columns].add_prefix("unedited_"),
        ],
        axis=1,
    )
    curve = pd.DataFrame(curve_rows, columns=["n_edits", "n_scored", *columns])
    seconds = {
        "unedited_scoring": unedited_seconds,
        "final_scoring": time.perf_counter() - edited_at,
        "edits": float(per_edit["seconds"].sum()),
        "this_process": time.perf_counter() - started,
    }
    log.info(
        "stream of %d edits: efficacy %.4f, generalization %.4f, specificity %.4f",
        total,
        metrics["efficacy"],
        metrics["generalization"],
        metrics["specificity"],
    )
    return StreamResult(
        n_edits=total,
        num_pre=num_pre,
        metrics=metrics,
        per_edit=per_edit,
        curve=curve,
        n_forwards=n_forwards,
        resumed_from=resumed_from,
        seconds=seconds,
    )


def _scorer(model, tokenizer, settings: StreamSettings, progress: bool):
    def score(records: Sequence[EditRecord], reference, desc: str, bar: bool = True) -> Scores:
        return score_records(
            model,
            tokenizer,
            records,
            batch_size=settings.batch_size,
            reference=reference,
            max_length=settings.max_length,
            progress=progress and bar,
            desc=desc,
        )

    return score
