"""The stateful user-facing editor: sequential edits committed in place, resumable state.

``HiEditor`` holds the backbone, the candidate modules, the low-level networks (one per shape
group), the router (absent for the dense ``rledit`` variant), the precision buffers of the commits
and the counters and random state of an edit stream. ``load_editor`` builds one from a job
configuration and, optionally, a trained checkpoint.
"""

from __future__ import annotations

import difflib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lowrank_kernels
from hiedit.atomic import save_torch
from hiedit.config import JobConfig, section_dict
from hiedit.data.records import QA, EditRecord
from hiedit.data.tokenize import Batch, check_fits_model, encode_qa
from hiedit.editor.capture import Capture, capture_gradients
from hiedit.editor.commit import commit_update
from hiedit.editor.lowlevel import Factors, LowLevelNet
from hiedit.editor.router import Router, topk_mask
from hiedit.editor.variants import Variant, random_subset, resolve_variant, static_module_set
from hiedit.errors import CheckpointMismatchError, ConfigError
from hiedit.models import candidate_modules
from hiedit.phases import EDIT_PHASES

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "hiedit-editor"
STATE_KIND = "hiedit-editor-state"
STATE_VERSION = 2
# Editor keys that change the networks (the others only change evaluation behaviour).
NETWORK_KEYS = ("style", "rank", "n_blocks", "lr", "token", "router_hidden")
# What an edit stream changes in the networks: the running normalisers' statistics only.
NORMALIZER_BUFFERS = (".normalizer.count", ".normalizer.mean", ".normalizer.m2")
REQUEST_KEYS = (
    "prompt",
    "target_new",
    "subject",
    "rephrase_prompt",
    "locality_prompt",
    "locality_ground_truth",
)


@dataclass
class EditStep:
    """What one sequential edit step did: the modules edited, its wall time and that of each phase.

    ``phases``: ``capture`` (forward and backward of the edit tuples), ``route`` (normaliser updates
    and module selection), ``update`` (the low-rank factors of the selected modules) and
    ``commit`` (the in-place update, with its finite check).
    """

    selected: list[str]
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)


def group_key(module: nn.Linear) -> str:
    """Shape-group name of a linear module: ``"<d_out>x<d_in>"``."""
    return f"{module.out_features}x{module.in_features}"


def network_identity(job: JobConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The configuration a set of trained networks depends on (stored in checkpoints and compared)."""
    job = JobConfig.from_dict(job)
    modules = job.module_names
    variant = resolve_variant(job.variant, int(job.model["k"]), len(modules))
    identity = {"model_name": job.model_name, "model.modules": modules}
    identity["trained_variant"] = variant.trained_as
    identity["k"] = variant.k
    editor = section_dict(job.editor)
    for key in NETWORK_KEYS:
        identity[f"editor.{key}"] = editor[key]
    return identity


def check_identity(saved: Mapping[str, Any], current: Mapping[str, Any], source: str) -> None:
    """Refuse a checkpoint whose identity differs, listing every differing key."""
    keys = sorted(set(saved) | set(current))
    differing = [k for k in keys if saved.get(k) != current.get(k)]
    if differing:
        details = "; ".join(
            f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}" for k in differing
        )
        raise CheckpointMismatchError(
            f"{source} was written under a different configuration: {details}"
        )


class HiEditor:
    """Sequential editor over the candidate modules of ``model`` (see the package docstring)."""

    def __init__(
        self, job: JobConfig | Mapping[str, Any], model: nn.Module, tokenizer: Any
    ) -> None:
        self.job = JobConfig.from_dict(job)
        self.model = model
        self.tokenizer = tokenizer
        editor_cfg = self.job.editor
        self.module_names: list[str] = self.job.module_names
        self.modules: list[nn.Linear] = candidate_modules(model, self.module_names)
        self.variant: Variant = resolve_variant(
            self.job.variant, int(self.job.model["k"]), len(self.module_names)
        )
        self.k = self.variant.k
        self.token = editor_cfg.token
        self.update_normalizer_in_eval = editor_cfg.update_normalizer_in_eval
        self.edits_per_step = self.job.training.edits_per_step
        self.seed = self.job.seed
        self.device = self.modules[0].weight.device

        init = torch.Generator().manual_seed(self.seed)
        self.groups = [group_key(m) for m in self.modules]
        self.local_index: list[int] = []
        members: dict[str, list[int]] = {}
        for index, key in enumerate(self.groups):
            self.local_index.append(len(members.setdefault(key, [])))
            members[key].append(index)
        self.group_members = members
        self.nets = nn.ModuleDict()
        for key, indices in members.items():
            first = self.modules[indices[0]]
            self.nets[key] = LowLevelNet(
                first.in_features,
                first.out_features,
                len(indices),
                rank=editor_cfg.rank,
                n_blocks=editor_cfg.n_blocks,
                lr=editor_cfg.lr,
                style=editor_cfg.style,
                generator=init,
            )
        self.router: Router | None = None
        if self.variant.uses_router:
            dims = {
                key: self.modules[idx[0]].in_features + self.modules[idx[0]].out_features
                for key, idx in members.items()
            }
            self.router = Router(self.groups, dims, editor_cfg.router_hidden, generator=init)
        self.nets.to(self.device)
        if self.router is not None:
            self.router.to(self.device)

        self.base_weights = [m.weight.detach().clone() for m in self.modules]
        self.precision = lowrank_kernels.PrecisionState(editor_cfg.commit_precision)
        self.selection_counts: list[int] | None = None
        self.static_set: list[int] | None = None
        self.step = 0
        self.rng = torch.Generator().manual_seed(self.seed + 1)
        self._snapshot_networks()

    # --- networks -------------------------------------------------------------------------------

    def network_state(self) -> dict[str, Any]:
        """State dicts of the networks (normaliser statistics included)."""
        return {
            "nets": {k: v.detach().clone() for k, v in self.nets.state_dict().items()},
            "router": None
            if self.router is None
            else {k: v.detach().clone() for k, v in self.router.state_dict().items()},
        }

    def load_network_state(self, state: Mapping[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])
        if self.router is not None:
            if state.get("router") is None:
                raise CheckpointMismatchError(
                    "the checkpoint holds no router but this variant needs one"
                )
            self.router.load_state_dict(state["router"])

    def _snapshot_networks(self) -> None:
        # What reset_model() returns the networks to (evaluation may update the normalisers).
        self._initial_networks = self.network_state()

    def parameters(self) -> list[nn.Parameter]:
        params = list(self.nets.parameters())
        if self.router is not None:
            params += list(self.router.parameters())
        return params

    # --- the pieces of one step -------------------------------------------------------------------

    def encode(self, qas: Sequence[QA]) -> Batch:
        batch = encode_qa(self.tokenizer, [q.prompt for q in qas], [q.target for q in qas])
        return batch.to(self.device)

    def capture(self, records: Sequence[EditRecord]) -> tuple[list[Capture], float]:
        """(u, δ) of every candidate module on the records' edit tuples, at the current weights."""
        batch = self.encode([r.edit for r in records])
        return capture_gradients(self.model, self.modules, batch, self.token)

    def update_normalizers(self, captures: Sequence[Capture]) -> None:
        for index, capture in enumerate(captures):
            rows = capture.rows
            self.nets[self.groups[index]].normalizer.update(rows)
            if self.router is not None:
                self.router.encoders[self.groups[index]].normalizer.update(rows)

    def scores(self, captures: Sequence[Capture]) -> torch.Tensor:
        """Router scores z (L)."""
        if self.router is None:
            raise RuntimeError(f"variant {self.variant.name} has no router")
        return self.router([c.rows for c in captures])

    def factors(
        self, captures: Sequence[Capture], which: Sequence[int] | None = None
    ) -> list[Factors | None]:
        """Low-rank updates of the modules ``which`` (default all); ``None`` for the others."""
        chosen = range(len(self.modules)) if which is None else which
        out: list[Factors | None] = [None] * len(self.modules)
        for key, indices in self.group_members.items():
            wanted = [i for i in indices if i in set(chosen)]
            if not wanted:
                continue
            produced = self.nets[key](
                [captures[i] for i in wanted], [self.local_index[i] for i in wanted]
            )
            for index, f in zip(wanted, produced, strict=True):
                out[index] = f
        return out

    def select(self, captures: Sequence[Capture]) -> list[int]:
        """Module indices this variant edits at inference for these captures."""
        selection = self.variant.selection
        if selection == "dense":
            return list(range(len(self.modules)))
        if selection == "random":
            return random_subset(len(self.modules), self.k, self.rng)
        if selection == "static":
            if self.static_set is None:
                self.static_set = static_module_set(
                    self.job.evaluation.static_k_modules,
                    self.module_names,
                    self.k,
                    self.selection_counts,
                )
            return list(self.static_set)
        mask = topk_mask(self.scores(captures), self.k)
        return mask.nonzero().flatten().tolist()

    def commit(self, factors: Sequence[Factors | None], selected: Sequence[int]) -> None:
        chosen = set(selected)
        commit_update(
            self.modules,
            factors,
            [i in chosen for i in range(len(self.modules))],
            self.precision,
            names=self.module_names,
            step=self.step,
        )

    # --- public API -----------------------------------------------------------------------------

    def edit_records(self, records: Sequence[EditRecord]) -> EditStep:
        """One sequential step: capture at the current weights, route, compute, commit in place."""
        ticks = [time.perf_counter()]
        captures, _ = self.capture(records)
        ticks.append(time.perf_counter())
        with torch.no_grad():
            if self.update_normalizer_in_eval:
                self.update_normalizers(captures)
            selected = self.select(captures)
            ticks.append(time.perf_counter())
            factors = self.factors(captures, selected)
            ticks.append(time.perf_counter())
        self.commit(factors, selected)
        ticks.append(time.perf_counter())
        self.step += 1
        phases = {name: ticks[i + 1] - ticks[i] for i, name in enumerate(EDIT_PHASES)}
        return EditStep([self.module_names[i] for i in selected], ticks[-1] - ticks[0], phases)

    def edit(self, requests: Sequence[Mapping[str, Any]]) -> list[EditStep]:
        """Apply EasyEdit-shaped requests in order, ``training.edits_per_step`` per step, in place.

        Each request needs ``prompt`` and ``target_new``; ``subject``, ``rephrase_prompt``,
        ``locality_prompt`` and ``locality_ground_truth`` are optional (the edit itself only uses
        the prompt and the new target); any other key is refused, naming it, and so is a request
        longer than the model's context. A single dict is one request. All requests are checked
        before anything is edited.
        """
        if isinstance(requests, Mapping):
            requests = [requests]  # one request
        if isinstance(requests, str | bytes) or not isinstance(requests, Sequence):
            raise ConfigError(
                f"edit() takes a list of request dicts, got {type(requests).__name__}"
            )
        records = [_request_to_record(i, r) for i, r in enumerate(requests)]
        # Past the model's context a capture runs on positions the model was never built for.
        check_fits_model(self.tokenizer, records, self.model, "edit() requests")
        steps = []
        for start in range(0, len(records), self.edits_per_step):
            steps.append(self.edit_records(records[start : start + self.edits_per_step]))
        return steps

    def reset_weights(self) -> None:
        """Restore the base weights of the candidate modules (and drop the precision buffers)."""
        with torch.no_grad():
            for module, base in zip(self.modules, self.base_weights, strict=True):
                module.weight.copy_(base)
        self.precision.reset()

    def reset_model(self) -> None:
        """Restore the base weights, the loaded networks (normaliser statistics) and the stream state."""
        self.reset_weights()
        self.load_network_state(self._initial_networks)
        self.step = 0
        self.rng = torch.Generator().manual_seed(self.seed + 1)

    def normalizer_state(self) -> dict[str, torch.Tensor]:
        """The running normalisers' statistics: all an edit stream changes in the networks."""
        state = self.network_state()
        out = {}
        for part in ("nets", "router"):
            for key, value in (state[part] or {}).items():
                if key.endswith(NORMALIZER_BUFFERS):
                    out[f"{part}.{key}"] = value
        return out

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """What a sequential edit stream needs to resume (written atomically).

        During a stream the networks are frozen except their normaliser statistics, so only
        those are saved (the networks themselves come from the checkpoint the stream was started
        with, which the stream's fingerprint pins), with the candidate modules' weights, their
        precision buffers, the step counter and the random state. A weight with an fp32 master
        copy is its rounded master, so only the master is written.
        """
        named = dict(zip(self.module_names, [m.weight for m in self.modules], strict=True))
        precision = self.precision.state_dict(named)
        mastered = {n for n, b in precision["buffers"].items() if b["kind"] == "master"}
        state = {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "identity": network_identity(self.job),
            "variant": self.variant.name,
            "normalizers": self.normalizer_state(),
            "weights": {n: w.detach().clone() for n, w in named.items() if n not in mastered},
            "precision": precision,
            "step": self.step,
            "rng": self.rng.get_state(),
            "selection_counts": self.selection_counts,
            "static_set": self.static_set,
        }
        save_torch(path, state)

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Resume a stream saved by :meth:`save_state` (refused if written under another config).

        The editor must have been built from the same checkpoint as the saved stream.
        """
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
            raise CheckpointMismatchError(
                f"{path}: not an editor state file of version {STATE_VERSION} "
                f"(kind {state.get('kind')!r}, version {state.get('version')!r})"
            )
        check_identity(state["identity"], network_identity(self.job), str(path))
        if state["variant"] != self.variant.name:
            raise CheckpointMismatchError(
                f"{path}: variant: checkpoint {state['variant']!r} vs config {self.variant.name!r}"
            )
        buffers = state["precision"]["buffers"]
        with torch.no_grad():
            for name, module in zip(self.module_names, self.modules, strict=True):
                saved = state["weights"].get(name)
                if saved is None:  # written as its master copy: the weight is its rounding
                    saved = buffers[name]["buffer"].to(module.weight.dtype)
                module.weight.copy_(saved)
        named = dict(zip(self.module_names, [m.weight for m in self.modules], strict=True))
        self.precision.load_state_dict(state["precision"], named)
        self.load_network_state(self._initial_networks)
        self._load_normalizers(state["normalizers"], str(path))
        self.step = int(state["step"])
        self.rng.set_state(state["rng"])
        self.selection_counts = state["selection_counts"]
        self.static_set = state["static_set"]

    def _load_normalizers(self, saved: Mapping[str, torch.Tensor], source: str) -> None:
        expected = self.normalizer_state()
        if set(saved) != set(expected):
            raise CheckpointMismatchError(f"{source}: normaliser statistics of other networks")
        parts = {"nets": self.nets, "router": self.router}
        with torch.no_grad():
            for key, value in saved.items():
                part, name = key.split(".", 1)
                parts[part].get_buffer(name).copy_(value)


def _request_to_record(index: int, request: Mapping[str, Any]) -> EditRecord:
    if not isinstance(request, Mapping):
        raise ConfigError(f"request {index}: expected a dict, got {type(request).__name__}")
    unknown = [key for key in request if key not in REQUEST_KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), REQUEST_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"request {index}: unknown key {key!r}{hint}; known keys: {', '.join(REQUEST_KEYS)}"
        )
    for key in ("prompt", "target_new"):
        if key not in request:
            raise ConfigError(f"request {index}: missing key {key!r}")
    for key in REQUEST_KEYS:
        if key in request and (not isinstance(request[key], str) or not request[key].strip()):
            raise ConfigError(f"request {index}: key {key!r} must be a non-empty string")
    prompt, target = request["prompt"], request["target_new"]
    subject = request.get("subject", "")
    if subject and subject not in prompt:
        raise ConfigError(
            f"request {index}: key 'subject' ({subject!r}) does not occur in the prompt"
        )
    rephrase = request.get("rephrase_prompt", prompt)
    loc_prompt = request.get("locality_prompt", prompt)
    loc_answer = request.get("locality_ground_truth", target)
    return EditRecord(
        record_id=f"request-{index}",
        subject=subject,
        relation="",
        format="zsre",
        edit=QA(prompt, target),
        equiv=QA(rephrase, target),
        unrel=QA(loc_prompt, loc_answer),
    )


def read_checkpoint(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Load a trained-editor checkpoint (written by the trainer)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: editor checkpoint not found")
    state = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointMismatchError(f"{path}: not a trained-editor checkpoint")
    return state


def load_editor(
    job: JobConfig | Mapping[str, Any],
    model: nn.Module,
    tokenizer: Any,
    checkpoint: str | os.PathLike[str] | None = None,
) -> HiEditor:
    """An editor for the job's variant: trained networks from ``checkpoint``, or a seeded fresh init."""
    editor = HiEditor(job, model, tokenizer)
    if checkpoint is not None:
        state = read_checkpoint(checkpoint, editor.device)
        check_identity(state["identity"], network_identity(editor.job), str(checkpoint))
        editor.load_network_state(state["networks"])
        editor.selection_counts = state.get("selection_counts")
        editor._snapshot_networks()
    return editor
