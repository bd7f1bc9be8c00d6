"""The tuned-step comparator: untrained networks whose per-module step sizes are searched on the
validation slice.

What training must beat is not an editor at the initial step size (which barely edits) but the
same networks with the best step size a careful user would pick. So: the normalisers are warmed
on ``warmup_records`` captures of the train split at the base weights; one shared step size is
chosen on a grid doubling from ``step_search_min`` to ``step_search_max``; then
``step_search_passes`` coordinate passes try halving and doubling each module's step size in turn
(within the grid), keeping a change when it raises the validation score
(:func:`hiedit.editor.validation.validation_score`). Every candidate is one validation stream
(:class:`hiedit.editor.validation.ValidationStream`); the eval stream is never looked at. The
result is an ordinary editor checkpoint (the networks at their initialisation, the searched log
step sizes), evaluated like any trained editor.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hiedit.atomic import save_torch
from hiedit.data.records import EditRecord
from hiedit.editor.api import CHECKPOINT_KIND, HiEditor, network_identity
from hiedit.editor.validation import (
    LOGGED_METRICS,
    ValidationStream,
    split_validation,
    validation_score,
)
from hiedit.errors import ConfigError

log = logging.getLogger(__name__)


def step_grid(low: float, high: float) -> list[float]:
    """``low, 2·low, 4·low, …`` up to ``high`` (inclusive within rounding)."""
    if not 0 < low <= high:
        raise ConfigError(
            f"config keys 'training.step_search_min/max': need 0 < min <= max, got {low}, {high}"
        )
    count = int(math.floor(math.log2(high / low) + 1e-9)) + 1
    return [low * 2.0**i for i in range(count)]


class StepSearch:
    """Searches the per-module step sizes of ``editor`` on a validation stream."""

    def __init__(self, editor: HiEditor, validation: ValidationStream) -> None:
        self.editor = editor
        self.validation = validation
        cfg = editor.job.training
        self.grid = step_grid(cfg.step_search_min, cfg.step_search_max)
        self.names = editor.module_names
        self.rows: list[dict[str, Any]] = []

    def set_steps(self, steps: Sequence[float]) -> None:
        """Set η_m for every module (η = lr·e^ρ, so ρ = ln(η / lr))."""
        editor = self.editor
        base = editor.job.editor.lr
        if base <= 0:
            raise ConfigError("tuned-step needs editor.lr > 0 (the step size is lr·e^ρ)")
        with torch.no_grad():
            for index, eta in enumerate(steps):
                net = editor.nets[editor.groups[index]]
                net.log_lr[editor.local_index[index]] = math.log(eta / base)

    def evaluate(self, steps: Sequence[float], phase: str) -> float:
        self.set_steps(steps)
        metrics = self.validation.run()
        score = validation_score(metrics)
        row: dict[str, Any] = {"candidate": len(self.rows), "phase": phase, "score": score}
        row.update({name: metrics.get(name) for name in LOGGED_METRICS})
        row.update({f"step_{name}": eta for name, eta in zip(self.names, steps, strict=True)})
        self.rows.append(row)
        log.info("step search %s: score %.4f", phase, score)
        return score

    def run(self, passes: int) -> list[float]:
        """The shared step size, then ``passes`` coordinate passes; returns the best steps."""
        n = len(self.editor.modules)
        scores = {eta: self.evaluate([eta] * n, f"shared {eta:.3g}") for eta in self.grid}
        shared = max(self.grid, key=lambda eta: (scores[eta], -eta))
        best, best_score = [shared] * n, scores[shared]
        for p in range(passes):
            for module in range(n):
                index = self.grid.index(best[module])
                for neighbour in (index - 1, index + 1):
                    if not 0 <= neighbour < len(self.grid):
                        continue
                    trial = list(best)
                    trial[module] = self.grid[neighbour]
                    score = self.evaluate(trial, f"pass {p} module {module}")
                    if score > best_score:
                        best, best_score = trial, score
        self.set_steps(best)
        return best


def warm_normalizers(editor: HiEditor, records: Sequence[EditRecord], count: int) -> None:
    """Merge ``count`` train-split captures at the base weights into the normalisers."""
    editor.reset_weights()
    for record in list(records)[:count]:
        captures, _ = editor.capture([record])
        with torch.no_grad():
            editor.update_normalizers(captures)


def search_step_sizes(
    editor: HiEditor,
    records: Sequence[EditRecord],
    out: str | os.PathLike[str],
    *,
    log_path: str | os.PathLike[str] | None = None,
    validation_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Fit the tuned-step editor on the train split's validation slice; write its checkpoint,
    the validation of every candidate (``validation_path``) and an empty per-step loss log
    (``log_path``: nothing is trained)."""
    from hiedit.editor.trainer import (
        default_log_path,
        default_validation_path,
        write_log,
        write_rows,
    )

    cfg = editor.job.training
    train, held_out = split_validation(records, cfg.validation_size)
    if not held_out:
        raise ConfigError("tuned-step needs a validation slice: set training.validation_size > 0")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(editor.seed))
    warm_normalizers(editor, [train[i] for i in order.tolist()], cfg.warmup_records)
    batch_size = editor.job.evaluation.batch_size
    validation = ValidationStream(editor, held_out, cfg.validation_edits, batch_size)
    search = StepSearch(editor, validation)
    steps = search.run(cfg.step_search_passes)
    log.info("tuned step sizes: %s", ", ".join(f"{s:.3g}" for s in steps))
    out = Path(out)
    state = {
        "kind": CHECKPOINT_KIND,
        "identity": network_identity(editor.job),
        "networks": editor.network_state(),
        "selection_counts": None,
        "complete": True,
        "step_sizes": steps,
    }
    save_torch(out, state)
    write_rows(search.rows, Path(validation_path or default_validation_path(out)))
    write_log([], Path(log_path or default_log_path(out)))
    return out
