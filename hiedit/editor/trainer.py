"""Trajectory training of the low-level network and the router (docs/method.md §5), with checkpoints.

Each trajectory starts from the base weights and edits a fresh slice of the train split one step
at a time. At step t: capture at W_t, route (Gumbel-top-K sample ω with its Plackett–Luce
log-probability), compute every module's low-rank update, score the last ``back_depth`` edits
through the side path (L_low(ω) with grad; KL targets and L_low(1) in one no-grad forward),
back-propagate ``L_low(ω) − sg(r_high) · log π(ω)`` and commit ω·Δ. Gradients are summed over
steps; both Adam optimisers step every ``update_every`` steps and at the trajectory's end, each
network clipped on its own. A checkpoint every ``checkpoint_every`` trajectories makes training
resumable with the same result as an uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hiedit.atomic import atomic_path, save_torch
from hiedit.config import JobConfig, section_dict
from hiedit.data.records import EditRecord
from hiedit.editor.api import CHECKPOINT_KIND, HiEditor, check_identity, network_identity
from hiedit.editor.losses import (
    ScoringBatch,
    answer_logits,
    l2_penalty,
    low_level_loss,
    packing_for,
    prediction_loss,
    reference_forward,
    scoring_batch,
    unrel_log_probs,
    weighted_loss,
)
from hiedit.editor.lowlevel import Factors
from hiedit.editor.prefix import PrefixCache
from hiedit.editor.router import gumbel_topk, straight_through, topk_mask
from hiedit.editor.sidepath import side_path
from hiedit.editor.validation import (
    VALIDATION_COLUMNS,
    EarlyStopping,
    ValidationStream,
    split_validation,
)
from hiedit.errors import CheckpointMismatchError, ConfigError, NonFiniteError

log = logging.getLogger(__name__)

LOG_COLUMNS = (
    "trajectory",
    "step",
    "global_step",
    "loss",
    "loss_full",
    "ce",
    "kl",
    "l2",
    "reward",
    "log_prob",
    "edit_nll_before",
    "selected",
    "seconds",
)
# Training keys that do not change the result (only how it is computed or saved).
NOT_IN_IDENTITY = ("side_path_chunk", "pack_tokens", "checkpoint_every")


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint: Path
    log_path: Path
    rows: list[dict[str, Any]]


def training_identity(job: JobConfig | dict[str, Any]) -> dict[str, Any]:
    """Network identity plus what determines the training run (for resume checks)."""
    job = JobConfig.from_dict(job)
    identity = network_identity(job)
    identity["seed"] = job.seed
    identity["dataset_name"] = job.dataset_name
    for key, value in section_dict(job.training).items():
        if key not in NOT_IN_IDENTITY:
            identity[f"training.{key}"] = value
    identity["editor.gumbel_tau"] = job.editor.gumbel_tau
    return identity


def default_log_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The loss CSV written next to a checkpoint: ``editor.pt`` -> ``editor.loss.csv``."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".loss.csv")


@dataclass
class Route:
    """The modules of one training step: the hard K-hot sample, the mask used in the loss (the
    straight-through one when the router learns pathwise) and the sample's log-probability."""

    hard: torch.Tensor
    mask: torch.Tensor
    log_prob: torch.Tensor | None


@dataclass
class SidePathLoss:
    """L_low(ω) of one step, computed chunk by chunk into detached leaves of the factors/mask."""

    ce: torch.Tensor
    kl: torch.Tensor
    l2: torch.Tensor
    total: torch.Tensor
    leaves: list[Factors]
    mask_leaf: torch.Tensor
    unrel: list[torch.Tensor]  # log-probabilities under ω: the next step's KL targets


class Trainer:
    """Trains ``editor``'s networks on ``records`` (the train split) under ``editor.job``."""

    def __init__(self, editor: HiEditor, records: Sequence[EditRecord]) -> None:
        self.editor = editor
        cfg = editor.job.training
        self.cfg = cfg
        self.tau = editor.job.editor.gumbel_tau
        if not records:
            raise ConfigError("the train split is empty")
        self.records = list(records)[: cfg.n_train]
        seed = editor.seed
        order = torch.randperm(len(self.records), generator=torch.Generator().manual_seed(seed))
        self.order = order.tolist()
        self.intrinsic = (
            editor.variant.intrinsic_reward
            if editor.variant.intrinsic_reward is not None
            else cfg.intrinsic_reward
        )
        self.has_router = editor.router is not None
        # trainable = step_size: only the per-module log step sizes move; the blocks and the
        # router keep their initialisation (the router still samples the modules, untrained).
        self.router_learns = self.has_router and cfg.trainable == "all"
        self.pathwise = cfg.pathwise_gradient and self.router_learns
        self.score_function = cfg.score_function and self.router_learns
        self.net_optimizer, self.router_optimizer = self._optimizers()
        self.sampler = torch.Generator().manual_seed(seed + 2)
        self.prefix = PrefixCache(editor.model, editor.modules)
        self.trajectory = 0
        self.global_step = 0
        self.rows: list[dict[str, Any]] = []
        # KL targets at the current weights, per record id. Step t's side-path forward under ω_t
        # computes exactly the weights W_t + ω_t Δ_t that the commit writes, so the unrel rows it
        # scored are step t+1's KL targets (up to rounding): only the newest record needs a base
        # forward. Cleared whenever the weights are reset.
        self.kl_targets: dict[str, torch.Tensor] = {}

    def _optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
        editor, cfg = self.editor, self.cfg
        log_lrs = [p for n, p in editor.nets.named_parameters() if n.endswith("log_lr")]
        others = [p for n, p in editor.nets.named_parameters() if not n.endswith("log_lr")]
        if cfg.trainable == "step_size":
            for param in others:
                param.requires_grad_(False)
            if editor.router is not None:
                editor.router.requires_grad_(False)
            others = []
        # The log step sizes ρ_m (η_m = lr·e^ρ) get their own Adam rate (MEND's "lr_lr"): at the
        # shared meta_lr a log step size moves by ~meta_lr per step, far too slowly to matter.
        groups = [{"params": log_lrs, "lr": cfg.step_size_lr}]
        if others:
            groups.insert(0, {"params": others})
        nets = torch.optim.Adam(groups, lr=cfg.meta_lr)
        router = (
            torch.optim.Adam(editor.router.parameters(), lr=cfg.meta_lr)
            if self.router_learns
            else None
        )
        return nets, router

    # --- one step -------------------------------------------------------------------------------

    def step_records(self, trajectory: int, step: int) -> list[EditRecord]:
        per_step = self.cfg.edits_per_step
        start = (trajectory * self.cfg.trajectory_length + step) * per_step
        return [self.records[self.order[(start + i) % len(self.records)]] for i in range(per_step)]

    def route(self, captures) -> Route:
        """Sample the step's modules (Gumbel-top-K; every module for a dense variant)."""
        editor = self.editor
        if not self.has_router:
            hard = torch.ones(len(editor.modules), device=editor.device)
            return Route(hard, hard, None)
        scores = editor.scores(captures)
        hard, _, log_prob = gumbel_topk(scores, editor.k, self.tau, self.sampler)
        mask = straight_through(hard, scores) if self.pathwise else hard
        return Route(hard, mask, log_prob)

    def kl_targets_for(
        self, factors: Sequence[Factors], scoring: ScoringBatch, with_full: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """KL targets of every backtracked record (new ones computed) and L_low(1)'s logits."""
        ids = scoring.record_ids
        missing = [i for i, rid in enumerate(ids) if rid not in self.kl_targets]
        fresh, full_logits = reference_forward(
            self.editor.model,
            self.editor.modules,
            factors,
            scoring,
            with_full=with_full,
            base_records=missing,
            prefix=self.prefix,
            pack_tokens=self.cfg.pack_tokens,
        )
        targets = dict(self.kl_targets)
        targets.update({ids[i]: logp for i, logp in zip(missing, fresh, strict=True)})
        return targets, full_logits

    def side_path_loss(
        self,
        factors: Sequence[Factors],
        mask: torch.Tensor,
        scoring: ScoringBatch,
        targets: dict[str, torch.Tensor],
    ) -> SidePathLoss:
        """L_low(ω) through the side path, back-propagated into detached leaves chunk by chunk.

        Each chunk's backward frees its activations into detached copies of the factors and the
        mask; :meth:`backward_into_networks` then carries those gradients into the networks in one
        backward (the same gradient as a single pass, with one chunk's activations in memory).
        """
        editor, cfg = self.editor, self.cfg
        leaves = [f.leaf_copy() for f in factors]
        mask_leaf = mask.detach().requires_grad_()
        ce = kl = torch.zeros((), device=editor.device)
        unrel: list[torch.Tensor] = []
        for chunk in scoring.chunks(cfg.side_path_chunk):
            chunk_base = torch.cat([targets[rid] for rid in chunk.record_ids])
            packing = packing_for(editor.model, chunk.batch, cfg.pack_tokens)
            with side_path(editor.modules, leaves, list(mask_leaf)):
                logits = answer_logits(editor.model, chunk.batch, self.prefix, packing)
            chunk_ce, chunk_kl = prediction_loss(logits, chunk_base, chunk)
            weighted_loss(chunk_ce, chunk_kl, 0.0, cfg).backward()
            ce, kl = ce + chunk_ce.detach(), kl + chunk_kl.detach()
            unrel.extend(unrel_log_probs(logits, chunk))
            del logits
        l2 = l2_penalty(leaves, mask_leaf)
        weighted_loss(0.0, 0.0, l2, cfg).backward()
        total = weighted_loss(ce, kl, l2.detach(), cfg)
        return SidePathLoss(ce, kl, l2.detach(), total, leaves, mask_leaf, unrel)

    def full_mask_loss(
        self,
        full_logits: torch.Tensor,
        factors: Sequence[Factors],
        scoring: ScoringBatch,
        targets: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """L_low(1): the same loss with every module's update (no gradient)."""
        with torch.no_grad():
            ones = torch.ones(len(self.editor.modules), device=self.editor.device)
            return low_level_loss(
                full_logits,
                torch.cat([targets[rid] for rid in scoring.record_ids]),
                scoring,
                [f.detached() for f in factors],
                ones,
                self.cfg,
            ).total

    def backward_into_networks(
        self,
        factors: Sequence[Factors],
        loss: SidePathLoss,
        route: Route,
        reward: torch.Tensor | None,
    ) -> None:
        """One backward from the leaves' gradients (and the score-function term) into both nets."""
        outputs: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        for f, leaf in zip(factors, loss.leaves, strict=True):
            for out, copy in ((f.a, leaf.a), (f.b, leaf.b), (f.scale, leaf.scale)):
                if out.requires_grad and copy.grad is not None:
                    outputs.append(out)
                    grads.append(copy.grad)
        if route.mask.requires_grad:  # the pathwise (straight-through) gradient to the router
            outputs.append(route.mask)
            grads.append(loss.mask_leaf.grad)
        if reward is not None:
            outputs.append(-reward * route.log_prob)
            grads.append(torch.ones_like(route.log_prob))
        if outputs:
            torch.autograd.backward(outputs, grads)

    def train_step(self, window: list[list[EditRecord]], step: int) -> dict[str, Any]:
        """One trajectory step on the newest records of ``window``; gradients are accumulated.

        Capture at W_t, route, compute every module's factors, score the last ``back_depth``
        edits through the side path (L_low(ω) with grad; the KL targets and L_low(1) without),
        back-propagate ``L_low(ω) − sg(r_high) · log π(ω)`` and commit ω·Δ.
        """
        editor = self.editor
        started = time.perf_counter()
        captures, nll_before = editor.capture(window[-1])
        with torch.no_grad():
            editor.update_normalizers(captures)
        route = self.route(captures)
        factors = editor.factors(captures)
        scoring = scoring_batch(
            editor.tokenizer, window[-self.cfg.back_depth :], self.cfg.time_decay, editor.device
        )
        need_full = self.score_function and self.intrinsic
        targets, full_logits = self.kl_targets_for(factors, scoring, need_full)
        loss = self.side_path_loss(factors, route.mask, scoring, targets)
        loss_full = (
            self.full_mask_loss(full_logits, factors, scoring, targets) if need_full else None
        )
        if not bool(torch.isfinite(loss.total)):
            raise NonFiniteError(
                f"training step {self.global_step} (trajectory {self.trajectory}, step {step}): "
                f"the low-level loss is {float(loss.total)}"
            )
        reward = None
        if self.score_function:
            # r_high = L_low(1) − L_low(ω) (intrinsic) or r_low(ω) = −L_low(ω) (ablation).
            reward = (loss_full - loss.total) if self.intrinsic else -loss.total
        self.backward_into_networks(factors, loss, route, reward)
        selected = route.hard.nonzero().flatten().tolist()
        editor.step = self.global_step
        editor.commit(factors, selected)
        self.kl_targets = dict(zip(scoring.record_ids, loss.unrel, strict=True))
        return {
            "trajectory": self.trajectory,
            "step": step,
            "global_step": self.global_step,
            "loss": float(loss.total),
            "loss_full": None if loss_full is None else float(loss_full),
            "ce": float(loss.ce),
            "kl": float(loss.kl),
            "l2": float(loss.l2),
            "reward": None if reward is None else float(reward),
            "log_prob": None if route.log_prob is None else float(route.log_prob.detach()),
            "edit_nll_before": nll_before,
            "selected": ";".join(map(str, selected)),
            "seconds": time.perf_counter() - started,
        }

    def optimizer_step(self) -> None:
        clip = self.cfg.clip_norm
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.editor.nets.parameters() if p.requires_grad], clip
        )
        self.net_optimizer.step()
        self.net_optimizer.zero_grad(set_to_none=True)
        if self.router_optimizer is not None:
            torch.nn.utils.clip_grad_norm_(list(self.editor.router.parameters()), clip)
            self.router_optimizer.step()
            self.router_optimizer.zero_grad(set_to_none=True)

    def run_trajectory(self) -> list[dict[str, Any]]:
        """One trajectory from the base weights; returns its log rows."""
        editor, cfg = self.editor, self.cfg
        editor.reset_weights()
        self.kl_targets = {}
        length, every = cfg.trajectory_length, cfg.update_every
        window: list[list[EditRecord]] = []
        rows = []
        editor.nets.train()
        for step in range(length):
            window.append(self.step_records(self.trajectory, step))
            window = window[-cfg.back_depth :]
            rows.append(self.train_step(window, step))
            self.global_step += 1
            if (step + 1) % every == 0 or step == length - 1:
                self.optimizer_step()
        editor.reset_weights()
        self.kl_targets = {}
        self.trajectory += 1
        return rows

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoint_state(
        self, complete: bool, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        editor = self.editor
        return {
            "kind": CHECKPOINT_KIND,
            "identity": network_identity(editor.job),
            "training_identity": training_identity(editor.job),
            "networks": editor.network_state(),
            "selection_counts": editor.selection_counts,
            "complete": complete,
            "progress": {
                "trajectory": self.trajectory,
                "global_step": self.global_step,
                "net_optimizer": self.net_optimizer.state_dict(),
                "router_optimizer": None
                if self.router_optimizer is None
                else self.router_optimizer.state_dict(),
                "sampler": self.sampler.get_state(),
                "rows": self.rows,
                **(extra or {}),
            },
        }

    def restore(self, state: dict[str, Any], source: str) -> None:
        check_identity(state["training_identity"], training_identity(self.editor.job), source)
        self.editor.load_network_state(state["networks"])
        self.editor.selection_counts = state.get("selection_counts")
        progress = state["progress"]
        self.trajectory = int(progress["trajectory"])
        self.global_step = int(progress["global_step"])
        self.net_optimizer.load_state_dict(progress["net_optimizer"])
        if self.router_optimizer is not None:
            self.router_optimizer.load_state_dict(progress["router_optimizer"])
        self.sampler.set_state(progress["sampler"])
        self.rows = list(progress["rows"])

    # --- static-k support -----------------------------------------------------------------------

    @torch.no_grad()
    def count_selections(self, n_records: int) -> list[int]:
        """How often the trained router's top-K picks each module over a sequential train stream."""
        editor = self.editor
        counts = [0] * len(editor.modules)
        editor.reset_weights()
        for i in range(n_records):
            records = [self.records[self.order[i % len(self.records)]]]
            with torch.enable_grad():
                captures, _ = editor.capture(records)
            selected = topk_mask(editor.scores(captures), editor.k).nonzero().flatten().tolist()
            for index in selected:
                counts[index] += 1
            editor.step = i
            editor.commit(editor.factors(captures, selected), selected)
        editor.reset_weights()
        return counts


def write_log(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """The per-step loss log (:data:`LOG_COLUMNS`)."""
    return write_rows(rows, path, LOG_COLUMNS)


def train_editor(
    editor: HiEditor,
    records: Sequence[EditRecord],
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    log_path: str | os.PathLike[str] | None = None,
    validation_path: str | os.PathLike[str] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``editor``'s networks on ``records`` and write the checkpoint ``out`` and a loss CSV.

    With ``training.validation_size`` > 0 a subject-disjoint slice of ``records`` is held out
    (:mod:`hiedit.editor.validation`): before training and every ``validate_every`` trajectories
    a validation stream is run and logged (``validation_path``, default
    ``<out stem>.validation.csv``); the checkpoint holds the networks of the best validation, and
    training stops once ``patience`` validations in a row did not improve on it.

    Unfinished checkpoints go to :func:`partial_path` (``<out>.partial``), never to ``out``: a
    workflow treats ``out`` as the finished result and deletes it when a job fails. With
    ``resume`` that partial checkpoint (same configuration, else ``CheckpointMismatchError``) is
    continued. ``stop_after`` ends the run after that many trajectories in total (an
    interruption, for tests), leaving the resumable partial checkpoint.
    """
    out = Path(out)
    partial = partial_path(out)
    log_path = Path(log_path) if log_path is not None else default_log_path(out)
    validation_path = (
        Path(validation_path) if validation_path is not None else default_validation_path(out)
    )
    train_records, held_out = split_validation(records, editor.job.training.validation_size)
    trainer = Trainer(editor, train_records)
    validation = _Validation(editor, held_out) if held_out else None
    if resume and partial.is_file():
        _resume(trainer, validation, partial)

    def save_partial() -> None:
        extra = {"validation": None if validation is None else validation.early.state()}
        save_torch(partial, trainer.checkpoint_state(complete=False, extra=extra))
        write_log(trainer.rows, log_path)

    stopped = _run_trajectories(trainer, validation, stop_after, progress, save_partial)
    complete = stopped or trainer.trajectory >= trainer.cfg.n_trajectories
    if not complete:
        save_partial()
        return TrainResult(partial, log_path, trainer.rows)
    if validation is not None:
        validation.finish(validation_path)
    else:  # the workflow expects the file: an empty log says no validation ran
        write_rows([], validation_path, VALIDATION_COLUMNS)
    if editor.router is not None and editor.selection_counts is None:
        editor.selection_counts = trainer.count_selections(trainer.cfg.trajectory_length)
    save_torch(out, trainer.checkpoint_state(complete=True))
    write_log(trainer.rows, log_path)
    partial.unlink(missing_ok=True)
    return TrainResult(out, log_path, trainer.rows)


def _resume(trainer, validation, partial: Path) -> None:
    """Continue from the partial checkpoint ``partial`` (training and validation progress)."""
    state = torch.load(partial, map_location=trainer.editor.device, weights_only=False)
    try:
        trainer.restore(state, str(partial))
    except CheckpointMismatchError as err:
        # In the workflow a changed configuration reruns the job with --resume: say what to do.
        raise CheckpointMismatchError(
            f"{err}; to train under the new configuration, delete {partial}"
        ) from err
    if validation is not None:
        validation.restore(state["progress"]["validation"])
    log.info("resuming %s at trajectory %d", partial, trainer.trajectory)


def _run_trajectories(trainer, validation, stop_after, progress, save_partial) -> bool:
    """Train trajectory by trajectory (validating on schedule); True when stopped early."""
    cfg, editor = trainer.cfg, trainer.editor
    total = cfg.n_trajectories
    end = total if stop_after is None else min(total, stop_after)
    if validation is not None and trainer.trajectory == 0 and not validation.early.rows:
        validation.check(0)  # the networks before training: the reference point of the curve
    bar = tqdm(
        range(trainer.trajectory, end),
        desc=f"train {editor.variant.name}",
        unit="traj",
        disable=not progress,
    )
    for _ in bar:
        rows = trainer.run_trajectory()
        trainer.rows.extend(rows)
        mean_loss = sum(r["loss"] for r in rows) / len(rows)
        bar.set_postfix(loss=f"{mean_loss:.3f}")
        log.info(
            "trajectory %d: mean L_low %.4f, %.2f s/step",
            trainer.trajectory - 1,
            mean_loss,
            sum(r["seconds"] for r in rows) / len(rows),
        )
        due = trainer.trajectory % cfg.validate_every == 0 or trainer.trajectory == total
        if validation is not None and due and validation.check(trainer.trajectory):
            bar.close()
            log.info("validation stopped improving: training stops early")
            return True
        if trainer.trajectory % cfg.checkpoint_every == 0 and trainer.trajectory < total:
            save_partial()
    return False


class _Validation:
    """The held-out slice, its stream and the early-stopping state of one training run."""

    def __init__(self, editor: HiEditor, records: Sequence[EditRecord]) -> None:
        cfg = editor.job.training
        self.editor = editor
        self.stream = ValidationStream(
            editor, records, cfg.validation_edits, editor.job.evaluation.batch_size
        )
        self.early = EarlyStopping(cfg.patience)

    def check(self, trajectory: int) -> bool:
        metrics = self.stream.run()
        return self.early.record(trajectory, metrics, self.editor.network_state())

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.early = EarlyStopping.from_state(state)

    def finish(self, path: Path) -> None:
        """Keep the best validated networks and write the validation log."""
        if self.early.best_networks is not None:
            self.editor.load_network_state(self.early.best_networks)
        write_rows(self.early.rows, path)


def default_validation_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The validation CSV next to a checkpoint: ``editor.pt`` -> ``editor.validation.csv``."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".validation.csv")


def write_rows(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
) -> Path:
    """A list of dicts as CSV, atomically (default columns: first-seen order; None is empty)."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return Path(path)


def partial_path(out: str | os.PathLike[str]) -> Path:
    """Where the resumable checkpoint of an unfinished run of ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".partial")
