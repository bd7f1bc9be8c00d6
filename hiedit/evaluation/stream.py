"""The sequential evaluation protocol: edit a stream of records one by one, then score it once.

Order of work (docs/method.md §8):

1. Score the *unedited* model on all ``T`` records (its metrics, and its ``unrel`` predictions
   that ``specificity_agreement`` compares against).
2. For each record in order: ``editor.edit_records([record])`` captures, routes, computes and
   commits the edit in place. Nothing is ever rolled back. An editor whose ``edits_per_step``
   is N > 1 (UltraEdit's turns) gets N consecutive records per call; ``per_edit`` still has one
   row per record (with the call's ``turn`` index, and the call's times shared out evenly), and
   curve points and saves fall on the first call boundary at or after their edit count.
3. At ``n_curve_points`` checkpoints ``t`` (evenly spaced, the last one at ``T``) score a fixed
   seeded sample of ``min(curve_sample, t)`` of the edits made so far; the sample at ``T`` is
   read from step 4 instead of being scored again.
4. After the stream, score all ``T`` records once, batched (O(T) forwards in all). **Retention**
   is the mean over the first ``min(num_pre, T)`` records of that final scoring.

With ``final_sample`` = F (0 < F < T), steps 1 and 4 score only the records that some number
needs: the first ``num_pre`` (retention, exact), every curve sample (so the curve is that of a full
run) and a seeded uniform sample of F of the T records, over which the whole-stream metrics are
averaged (an unbiased estimate at a fixed cost, for streams whose O(T) scoring would cost as much
as the edits). ``per_edit`` then leaves the metric columns of the other records empty and marks the
uniform sample in ``whole_stream_sample``.

With a state folder the stream saves the editor state, the progress (per-edit log, curve points,
unedited scores) and the random number generator states every ``save_every`` edits, whenever
``save_interval`` seconds have passed since the last save (a time budget: the number of saves
does not grow with the stream), and after the last edit; a rerun with the same inputs resumes
after the last save and ends with metrics identical to an uninterrupted run. A state folder
written for other inputs is refused; :meth:`StateFolder.remove` deletes what the stream wrote.
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
    REFERENCE_COLUMNS,
    ROLE_METRICS,
    Scores,
    UnrelReference,
    metric_columns,
    prefixed,
    score_records,
    summarize,
)
from hiedit.phases import phase_column

if TYPE_CHECKING:
    import pandas as pd

    from hiedit.config import JobConfig
    from hiedit.data.records import EditRecord

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.pt"
STATE_VERSION = 2
RETENTION_METRICS = tuple(ROLE_METRICS.values())


class SequentialEditor(Protocol):
    """What the stream needs from an editor (``hiedit.editor.HiEditor`` provides it)."""

    module_names: Sequence[str]
    # Records per edit_records call (optional attribute, default 1).
    edits_per_step: int

    def edit_records(self, records: Sequence[EditRecord]) -> Any:
        """Edit and commit in place; return an object with ``selected`` and ``seconds``."""

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """Write what a stream needs to resume to ``path`` (atomically, or the stream's own
        temporary wrapper makes it so)."""

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
    save_every: int = 0  # save every this many edits (0: no count-based saves)
    # Time budget (0: off): save when this many seconds have passed since the last save, and
    # never sooner than the last save's duration / save_time_fraction, so saving costs at most
    # that fraction of the stream's time however slow a save is.
    save_interval: float = 0.0
    save_time_fraction: float = 0.05
    max_length: int | None = None
    final_sample: int = 0  # 0: score every record; F: see the module docstring

    @classmethod
    def from_job_config(
        cls, job: JobConfig, *, save_every: int = 0, save_interval: float = 0.0
    ) -> StreamSettings:
        """Settings from a job configuration (:class:`hiedit.config.JobConfig`)."""
        evaluation = job.evaluation
        return cls(
            n_edits=evaluation.n_edits,
            num_pre=evaluation.num_pre,
            n_curve_points=evaluation.n_curve_points,
            curve_sample=evaluation.curve_sample,
            batch_size=evaluation.batch_size,
            seed=job.seed,
            save_every=save_every,
            save_interval=save_interval,
            final_sample=evaluation.final_sample,
        )

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change results (the save schedule does not)."""
        fingerprint = {
            "n_edits": self.n_edits,
            "num_pre": self.num_pre,
            "n_curve_points": self.n_curve_points,
            "curve_sample": self.curve_sample,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "max_length": self.max_length,
        }
        if self.final_sample:  # absent when off, so earlier state folders still resume
            fingerprint["final_sample"] = self.final_sample
        return fingerprint


@dataclass
class StreamResult:
    """Everything one stream produced.

    ``metrics``: the edited model's summary after the stream (``efficacy``, …), ``retention_*``
    and the unedited model's ``unedited_*`` on the same records (``whole_stream_scored`` of them:
    all ``n_edits``, or the ``final_sample``); ``per_edit``: one row per edit
    (index, record_id, relation, selected, seconds, wall_seconds, ``<phase>_seconds`` where the
    editor reports its phases, the record's metric values after
    the stream, and its ``unedited_*`` values); ``curve``: one row per checkpoint (n_edits,
    n_scored, metrics of the sample); ``n_forwards``: scoring forwards (the editor's excluded);
    ``seconds``: unedited_scoring, final_scoring, edits (sum of the editor's step times),
    state_saves (time spent saving the stream state, when there is a state folder) and
    this_process (wall time of this call, which after a resume covers only the remainder).
    """

    n_edits: int
    num_pre: int
    metrics: dict[str, float]
    per_edit: pd.DataFrame
    curve: pd.DataFrame
    n_forwards: int
    whole_stream_scored: int = 0  # records the whole-stream metrics average over
    resumed_from: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    state_saves: int = 0  # saves of the stream state made by this process
    state_bytes: int = 0  # bytes those saves wrote
    state_folder: StateFolder | None = None
    unedited: Scores | None = None  # the unedited model's scores (not after a resume)

    def remove_state(self) -> None:
        """Delete the stream's saved state (once its results are safely written)."""
        if self.state_folder is not None:
            self.state_folder.remove()


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


def whole_stream_sample(total: int, size: int, seed: int) -> list[int]:
    """The seeded uniform sample (sorted) of ``min(size, total)`` of a stream's ``total`` records
    that the whole-stream metrics average over under ``final_sample`` (drawn apart from the
    curve samples)."""
    import numpy as np

    rng = np.random.default_rng([seed, total, 1])
    picked = rng.choice(total, size=min(size, total), replace=False)
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


class StateFolder:
    """Periodic saves of the editor and the stream's progress in one folder.

    The editor state is written under a name that carries the edit count, then ``progress.pt``
    (which names it) is replaced; a crash between the two leaves the previous pair intact.
    """

    def __init__(self, folder: str | os.PathLike[str], fingerprint: Mapping[str, Any]):
        self.folder = Path(folder)
        self.fingerprint = dict(fingerprint)
        self.bytes_written = 0
        self.seconds = 0.0
        self.last_seconds = 0.0
        self.saves = 0

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
                f"delete {self.folder} to start this stream over, or use another state folder"
            )
        return progress

    def save(self, editor: SequentialEditor, progress: dict[str, Any]) -> None:
        from hiedit.atomic import atomic_path, save_torch

        started = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_litter()
        editor_name = f"editor-{progress['done']:08d}.pt"
        new_file = not (self.folder / editor_name).exists()
        with atomic_path(self.folder / editor_name) as tmp:
            editor.save_state(tmp)
        progress = {
            **progress,
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "editor_state": editor_name,
        }
        try:
            save_torch(self.folder / PROGRESS_FILE, progress)
        except BaseException:
            # The previous pair stays the saved state; an editor file nothing names is litter.
            if new_file:
                (self.folder / editor_name).unlink(missing_ok=True)
            raise
        for old in self.folder.glob("editor-*.pt"):
            if old.name != editor_name:
                old.unlink(missing_ok=True)
        self.saves += 1
        self.bytes_written += sum(
            (self.folder / name).stat().st_size for name in (editor_name, PROGRESS_FILE)
        )
        self.last_seconds = time.perf_counter() - started
        self.seconds += self.last_seconds
        log.debug("saved stream state after %d edits in %s", progress["done"], self.folder)

    def _remove_litter(self) -> None:
        """Delete the temporaries of saves a hard kill interrupted. The editor file is written
        through a temporary whose name is ``.editor-….pt.<random>.tmp``; an editor whose own
        ``save_state`` is atomic too writes through a temporary of that temporary
        (``..editor-….tmp.<random>.tmp``), which no later save of the same name would remove."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            own = path.name.lstrip(".").startswith(("editor-", f"{PROGRESS_FILE}."))
            if path.name.startswith(".") and path.name.endswith(".tmp") and own:
                path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete what the stream wrote here (a user-given folder may hold other things)."""
        self._remove_litter()
        (self.folder / PROGRESS_FILE).unlink(missing_ok=True)
        for path in self.folder.glob("editor-*.pt"):
            path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


@dataclass
class SavedProgress:
    """What a stream's state folder holds: the stream so far, readable while it still runs.

    ``per_edit``: the edit log of the first ``done`` records (the ``per_edit.csv`` columns that
    exist before the final scoring); ``curve``: the checkpoints already scored (``curve.csv``'s
    columns but for a metric undefined at every point so far; the point at ``total`` comes from
    the final scoring, so it is never here).
    """

    done: int
    total: int
    per_edit: pd.DataFrame
    curve: pd.DataFrame
    saved_at: float  # when progress.pt was written (seconds since the epoch)


def read_saved_progress(state_dir: str | os.PathLike[str]) -> SavedProgress:
    """The progress of a running or interrupted stream from its state folder, without resuming it
    (nothing is changed there). Raises :class:`CheckpointMismatchError` naming the file when the
    folder holds no saved progress or one of another state version."""
    import pandas as pd
    import torch

    path = Path(state_dir) / PROGRESS_FILE
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: no saved stream progress here")
    progress = torch.load(path, map_location="cpu", weights_only=True)
    if progress.get("version") != STATE_VERSION:
        raise CheckpointMismatchError(
            f"{path}: state version {progress.get('version')}, expected {STATE_VERSION}"
        )
    curve = pd.DataFrame(progress["curve"])
    if curve.empty:
        curve = pd.DataFrame(columns=["n_edits", "n_scored"])
    return SavedProgress(
        done=int(progress["done"]),
        total=len(progress["fingerprint"]["records"]),
        per_edit=pd.DataFrame(progress["per_edit"]),
        curve=curve,
        saved_at=path.stat().st_mtime,
    )


def _rss_mib() -> float:
    """This process's resident memory now (MiB): logged per edit, so growth shows along a stream."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


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
    unedited: Scores | None = None,
) -> StreamResult:
    """Run the sequential protocol (module docstring) on the first ``settings.n_edits`` records.

    ``state_dir``: where periodic state is kept and resumed from; ``fingerprint``: what else
    identifies the inputs (job configuration, data, checkpoint) so that a state folder written
    for something else is refused rather than silently continued. ``unedited``: the unedited
    model's scores of these records from an earlier stream (:attr:`StreamResult.unedited`), so
    that repeated streams on the same records (validation) score the unedited model once.
    """
    run = _Stream(editor, model, tokenizer, records, settings, progress)
    if state_dir is not None:
        run.attach_state(state_dir, fingerprint or {})
    run.start(unedited)
    run.edit_all()
    return run.assemble()


def run_edits_only(
    editor: SequentialEditor,
    model,
    tokenizer,
    records: Sequence[EditRecord],
    settings: StreamSettings,
    *,
    progress: bool = True,
):
    """The stream's edit loop alone, without the scoring before and after it: the per-edit log
    (``index``, ``wall_seconds``, ``rss_mib``, the phases …) as a DataFrame.

    For cost benchmarks (``benchmarks/long_stream.py --edits-only``): the edits, their
    bookkeeping and their timing are those of :func:`run_stream`, which scores every record
    once before and once after them. Curve points need those scores, so
    ``settings.n_curve_points`` must be 0.
    """
    import pandas as pd

    if settings.n_curve_points:
        raise ValueError("run_edits_only scores nothing: set n_curve_points to 0")
    run = _Stream(editor, model, tokenizer, records, settings, progress)
    run.edit_all()
    return pd.DataFrame(run.edit_log)


class _Stream:
    """One stream's progress: its records, what has been edited and scored, and its saves."""

    def __init__(self, editor, model, tokenizer, records, settings: StreamSettings, progress):
        self.started = time.perf_counter()
        if settings.n_edits < 1:
            raise ValueError(f"n_edits must be positive, got {settings.n_edits}")
        if len(records) < settings.n_edits:
            log.warning(
                "the eval split has %d records; the stream uses all of them instead of n_edits = %d",
                len(records),
                settings.n_edits,
            )
        self.stream = list(records[: settings.n_edits])
        if not self.stream:
            raise ValueError("no records to edit")
        self.editor, self.settings, self.progress = editor, settings, progress
        self.per_call = max(1, int(getattr(editor, "edits_per_step", 1)))
        self.total = len(self.stream)
        self.checkpoints = curve_checkpoints(self.total, settings.n_curve_points)
        # The records scored before and after the stream (all, or those some number needs).
        self.sampled = 0 < settings.final_sample < self.total
        if self.sampled:
            self.whole = whole_stream_sample(self.total, settings.final_sample, settings.seed)
            needed = set(self.whole) | set(range(min(settings.num_pre, self.total)))
            for point in self.checkpoints:
                needed.update(curve_sample_indices(point, settings.curve_sample, settings.seed))
            self.scored = sorted(needed)
        else:
            self.whole = self.scored = list(range(self.total))
        self.position = {index: row for row, index in enumerate(self.scored)}
        self.columns = metric_columns(self.stream[0].format)
        self.score = _scorer(model, tokenizer, settings, progress)
        self.folder: StateFolder | None = None
        self.done = 0
        self.resumed_from = 0
        self.edit_log: list[dict[str, Any]] = []
        self.curve_rows: list[dict[str, Any]] = []
        self.last_save = time.perf_counter()
        self.unedited: Scores | None = None

    def attach_state(self, state_dir, fingerprint: Mapping[str, Any]) -> None:
        full_fingerprint = {
            "settings": self.settings.fingerprint(),
            "edits_per_call": self.per_call,
            "records": [rec.record_id for rec in self.stream],
            "inputs": dict(fingerprint),
        }
        self.folder = StateFolder(state_dir, full_fingerprint)

    def start(self, unedited: Scores | None = None) -> None:
        """Resume from the state folder, or score the unedited model (and save that)."""
        saved = self.folder.load() if self.folder is not None else None
        if saved is not None:
            self.editor.load_state(self.folder.folder / saved["editor_state"])
            _set_rng_state(saved["rng"])
            self.done = self.resumed_from = int(saved["done"])
            self.unedited_table = saved["unedited"]
            self.unedited_reference = UnrelReference.from_state(saved["unedited_reference"])
            self.edit_log = list(saved["per_edit"])
            self.curve_rows = list(saved["curve"])
            self.n_forwards = int(saved["n_forwards"])
            self.unedited_seconds = float(saved["unedited_seconds"])
            log.info("resuming the stream after %d of %d edits", self.done, self.total)
            return
        reused = unedited is not None and len(unedited.frame) == self.total
        if reused and self.sampled:  # a full scoring of the stream: keep the rows needed here
            unedited = Scores(
                unedited.frame.iloc[self.scored].reset_index(drop=True),
                unedited.reference.subset(self.scored),
                unedited.n_forwards,
            )
        if not reused:
            unedited = self.score(self.scored_records(), None, "scoring unedited")
        self.unedited = unedited
        self.unedited_seconds = time.perf_counter() - self.started
        self.unedited_table = _score_frame(unedited)
        self.unedited_reference = unedited.reference
        self.n_forwards = 0 if reused else unedited.n_forwards
        self.save()

    def scored_records(self) -> list[EditRecord]:
        return [self.stream[i] for i in self.scored]

    def full_length(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A frame of the scored records as one row per stream record (others empty)."""
        frame = frame.reset_index(drop=True)
        if not self.sampled:
            return frame
        return frame.set_axis(self.scored).reindex(range(self.total)).reset_index(drop=True)

    def snapshot(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "per_edit": self.edit_log,
            "curve": self.curve_rows,
            "unedited": self.unedited_table,
            "unedited_reference": self.unedited_reference.to_state(),
            "n_forwards": self.n_forwards,
            "unedited_seconds": self.unedited_seconds,
            "rng": _rng_state(),
        }

    def save(self) -> None:
        if self.folder is not None:
            self.folder.save(self.editor, self.snapshot())
            self.last_save = time.perf_counter()

    def save_due(self, before: int) -> bool:
        """Whether to save after a call that took the stream from ``before`` to ``done`` edits."""
        settings = self.settings
        if self.done == self.total:  # a crash in the final scoring then redoes no edit
            return True
        every = settings.save_every
        if every > 0 and self.done // every > before // every:
            return True
        if settings.save_interval <= 0 or self.folder is None:
            return False
        waited = time.perf_counter() - self.last_save
        budget = self.folder.last_seconds / settings.save_time_fraction
        return waited >= max(settings.save_interval, budget)

    def edit_call(self, start: int) -> None:
        """One ``edit_records`` call on the records from ``start`` (``per_call`` of them)."""
        records = self.stream[start : start + self.per_call]
        tick = time.perf_counter()
        step = self.editor.edit_records(records)
        share = 1.0 / len(records)  # one row per record: the call's times shared out
        wall = (time.perf_counter() - tick) * share
        phases = {
            phase_column(name): float(value) * share
            for name, value in getattr(step, "phases", {}).items()
        }
        turn = start // self.per_call
        rss = _rss_mib()
        for offset, record in enumerate(records):
            self.edit_log.append(
                {
                    "index": start + offset,
                    "record_id": record.record_id,
                    "relation": record.relation,
                    "turn": turn,
                    "selected": ";".join(step.selected),
                    "n_selected": len(step.selected),
                    "seconds": float(step.seconds) * share,
                    "wall_seconds": wall,
                    "rss_mib": rss,
                    # Editors that time their phases (HiEditor does) get one column per phase.
                    **phases,
                }
            )
        self.done = start + len(records)

    def curve_point(self) -> None:
        """Score a fixed sample of the edits made so far (the point at T comes from the end)."""
        sample = curve_sample_indices(self.done, self.settings.curve_sample, self.settings.seed)
        scores = self.score(
            [self.stream[i] for i in sample],
            self.unedited_reference.subset([self.position[i] for i in sample]),
            f"curve at {self.done}",
            bar=False,  # short, and would interleave with the stream's bar
        )
        self.n_forwards += scores.n_forwards
        self.curve_rows.append(
            {
                "n_edits": self.done,
                "n_scored": len(sample),
                **summarize(scores.frame, self.columns),
            }
        )

    def edit_all(self) -> None:
        bar = tqdm(
            total=self.total,
            initial=self.done,
            desc="editing",
            unit="edit",
            disable=not self.progress,
        )
        try:
            while self.done < self.total:
                before = self.done
                self.edit_call(before)
                bar.update(self.done - before)
                reached = [c for c in self.checkpoints if before < c <= self.done]
                if reached and self.done < self.total:
                    self.curve_point()
                if self.save_due(before):
                    self.save()
        finally:
            bar.close()
        self.edited_at = time.perf_counter()

    def assemble(self) -> StreamResult:
        """The final O(T) scoring, the last curve point, and the metrics and tables."""
        import pandas as pd

        final = self.score(self.scored_records(), self.unedited_reference, "scoring edited")
        self.n_forwards += final.n_forwards
        edited = self.full_length(final.frame)
        if self.total in self.checkpoints:
            sample = curve_sample_indices(
                self.total, self.settings.curve_sample, self.settings.seed
            )
            self.curve_rows.append(
                {
                    "n_edits": self.total,
                    "n_scored": len(sample),
                    **summarize(edited.iloc[sample], self.columns),
                }
            )
        unedited = self.full_length(pd.DataFrame(self.unedited_table))
        per_edit = pd.concat(
            [
                pd.DataFrame(self.edit_log),
                edited,
                unedited[self._unedited_columns()].add_prefix("unedited_"),
            ],
            axis=1,
        )
        if self.sampled:
            per_edit["whole_stream_sample"] = per_edit.index.isin(self.whole)
        metrics = self._metrics(edited, unedited)
        log.info(
            "stream of %d edits: efficacy %.4f, generalization %.4f, specificity %.4f",
            self.total,
            metrics["efficacy"],
            metrics["generalization"],
            metrics["specificity"],
        )
        return StreamResult(
            n_edits=self.total,
            num_pre=min(self.settings.num_pre, self.total),
            metrics=metrics,
            per_edit=per_edit,
            curve=pd.DataFrame(self.curve_rows, columns=["n_edits", "n_scored", *self.columns]),
            n_forwards=self.n_forwards,
            whole_stream_scored=len(self.whole),
            resumed_from=self.resumed_from,
            seconds=self._seconds(per_edit),
            state_saves=0 if self.folder is None else self.folder.saves,
            state_bytes=0 if self.folder is None else self.folder.bytes_written,
            state_folder=self.folder,
            unedited=self.unedited,
        )

    def _unedited_columns(self) -> list[str]:
        return [c for c in self.columns if c not in REFERENCE_COLUMNS]

    def _metrics(self, final: pd.DataFrame, unedited: pd.DataFrame) -> dict[str, float]:
        num_pre = min(self.settings.num_pre, self.total)
        metrics = summarize(final.iloc[self.whole], self.columns)
        metrics.update(prefixed(summarize(final.iloc[:num_pre], RETENTION_METRICS), "retention_"))
        metrics.update(
            prefixed(summarize(unedited.iloc[self.whole], self._unedited_columns()), "unedited_")
        )
        metrics.update(
            prefixed(summarize(unedited.iloc[:num_pre], RETENTION_METRICS), "unedited_retention_")
        )
        return metrics

    def _seconds(self, per_edit: pd.DataFrame) -> dict[str, float]:
        now = time.perf_counter()
        seconds = {
            "unedited_scoring": self.unedited_seconds,
            "final_scoring": now - self.edited_at,
            "edits": float(per_edit["seconds"].sum()),
            "this_process": now - self.started,
        }
        if self.folder is not None:
            seconds["state_saves"] = self.folder.seconds
        return seconds


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
