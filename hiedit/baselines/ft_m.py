"""FT-M: constrained fine-tuning of chosen weights on the answer tokens, one edit at a time.

The baseline EasyEdit calls FT-M (``easyeditor/models/ft``, ``objective_optimization:
target_new``): for each edit, Adam on the negative log-likelihood of the answer tokens under
teacher forcing (prompt positions masked, the project's one rule in
:func:`hiedit.data.tokenize.encode_qa`), on the chosen modules' weights only, for at most
``steps`` steps. Per edit:

1. fresh fp32 copies of the chosen weights become the only tensors that require a gradient, with
   a fresh Adam state (nothing carries over between edits);
2. each step runs one forward through those copies; the loop stops before stepping once every
   answer token is the argmax at its position, or once the loss falls below ``stop_loss``
   (EasyEdit's own rule: it skips the step and stops the edit when the loss is under 1e-2);
3. after each step an optional L∞ constraint clamps every entry of a weight to within
   ``norm_constraint`` of its value before this edit (EasyEdit's ``norm_constraint``);
4. the result is written into the model in place.

Where this differs from EasyEdit: the answer loss is the mean of each record's mean answer NLL
(EasyEdit's for a batch size of 1, its configs' setting); bf16/fp16 weights are optimised through
an fp32 master copy that persists across edits (Adam on the low-precision weights themselves would
round most small steps away over a long stream), and the model's weights are always
``round(master)``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hiedit.atomic import atomic_path
from hiedit.data.tokenize import IGNORE_INDEX, Batch, encode_qa
from hiedit.editor.api import EditStep, check_identity
from hiedit.editor.capture import position_nll
from hiedit.errors import CheckpointMismatchError, ConfigError, NonFiniteError
from hiedit.models import candidate_modules, output_logits

log = logging.getLogger(__name__)

NAME = "ft-m"
STATE_KIND = "ft-m-state"
CANDIDATES = "candidates"


@dataclass(frozen=True)
class FTMConfig:
    """FT-M hyperparameters (``baselines.ft-m`` in ``config.yaml``; defaults: EasyEdit's configs).

    ``modules``: ``"candidates"`` (the model's candidate modules, the ones HiEdit chooses from) or
    an explicit tuple of module paths. ``norm_constraint``: ``None`` for no constraint.
    """

    lr: float = 5e-4
    steps: int = 25
    stop_loss: float = 1e-2
    norm_constraint: float | None = None
    modules: str | tuple[str, ...] = CANDIDATES

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = f"baselines.{NAME}") -> FTMConfig:
        """Read and check a config section; missing keys take the defaults, unknown keys fail."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        defaults = cls()
        get = lambda key: values.get(key, getattr(defaults, key))  # noqa: E731
        constraint = get("norm_constraint")
        return cls(
            lr=_number(get("lr"), f"{where}.lr", minimum=0.0, strict=True),
            steps=_integer(get("steps"), f"{where}.steps", minimum=1),
            stop_loss=_number(get("stop_loss"), f"{where}.stop_loss", minimum=0.0),
            norm_constraint=None
            if constraint is None
            else _number(constraint, f"{where}.norm_constraint", minimum=0.0, strict=True),
            modules=_modules(get("modules"), f"{where}.modules"),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if isinstance(self.modules, tuple):
            out["modules"] = list(self.modules)
        return out


def _number(value: Any, key: str, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ConfigError(f"{key}: must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return value


def _integer(value: Any, key: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")
    return value


def _modules(value: Any, key: str) -> str | tuple[str, ...]:
    if value == CANDIDATES:
        return CANDIDATES
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{key}: lists a module twice")
        return tuple(value)
    raise ConfigError(f"{key}: must be {CANDIDATES!r} or a non-empty list of module paths")


def chosen_modules(setting: str | Sequence[str], candidates: Sequence[str]) -> list[str]:
    """The module paths a ``modules`` setting names (``"candidates"``: the model's candidates)."""
    return list(candidates) if setting == CANDIDATES else list(setting)


class FTMEditor:
    """Sequential FT-M over ``module_names`` (see the module docstring)."""

    def __init__(
        self,
        settings: FTMConfig,
        model: nn.Module,
        tokenizer: Any,
        *,
        module_names: Sequence[str],
        seed: int = 0,
    ) -> None:
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.seed = int(seed)  # FT-M draws nothing at random; kept for the run's record
        self.module_names: list[str] = chosen_modules(settings.modules, module_names)
        self.modules: list[nn.Linear] = candidate_modules(model, self.module_names)
        self.device = self.modules[0].weight.device
        # fp32 weights are their own master; low-precision ones get an fp32 copy that persists.
        self.own_master = [m.weight.dtype != torch.float32 for m in self.modules]
        self.masters: list[torch.Tensor] = [
            m.weight.detach().float() if own else m.weight
            for m, own in zip(self.modules, self.own_master, strict=True)
        ]
        self.forward_target, self.param_names = _forward_target(model, self.module_names)
        self.n_edits = 0
        self.last_steps = 0  # Adam steps taken by the latest edit (0: the target was already met)

    def identity(self) -> dict[str, Any]:
        """What a saved state depends on (compared on load)."""
        return {
            "editor": NAME,
            "modules": list(self.module_names),
            "dtypes": [str(m.weight.dtype) for m in self.modules],
            **{f"{NAME}.{k}": v for k, v in self.settings.to_dict().items()},
        }

    def encode(self, records: Sequence[Any]) -> Batch:
        qas = [r.edit for r in records]
        return encode_qa(self.tokenizer, [q.prompt for q in qas], [q.target for q in qas]).to(
            self.device
        )

    def _loss(self, batch: Batch, weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """Mean over records of each record's mean answer NLL, and whether every token is argmax."""
        params = {
            name: w.to(m.weight.dtype)
            for name, w, m in zip(self.param_names, weights, self.modules, strict=True)
        }
        positions = batch.labels != IGNORE_INDEX
        inputs = {**batch.model_inputs(), "use_cache": False}
        if self.forward_target is self.model:
            logits = torch.func.functional_call(self.model, params, args=(), kwargs=inputs).logits
            logits = logits[positions]
        else:
            # The output head only at the answer positions, as in gradient capture.
            out = torch.func.functional_call(self.forward_target, params, args=(), kwargs=inputs)
            logits = output_logits(self.model, out.last_hidden_state[positions])
        targets = batch.labels[positions]
        loss = position_nll(logits, targets, positions.nonzero()[:, 0]) / batch.labels.shape[0]
        solved = bool((logits.argmax(-1) == targets).all())
        return loss, solved

    def edit_records(self, records: Sequence[Any]) -> EditStep:
        """Fine-tune on the records' edit tuples (one batch) and write the result in place."""
        if not records:
            raise ValueError("edit_records needs at least one record")
        started = time.perf_counter()
        batch = self.encode(records)
        leaves = [m.detach().clone().requires_grad_(True) for m in self.masters]
        optimizer = torch.optim.Adam(leaves, lr=self.settings.lr)
        taken = 0
        with torch.enable_grad():
            for _ in range(self.settings.steps):
                loss, solved = self._loss(batch, leaves)
                if not torch.isfinite(loss):
                    raise NonFiniteError(
                        f"{NAME} edit {self.n_edits} (record {records[0].record_id}): "
                        f"non-finite loss after {taken} steps"
                    )
                if solved or float(loss.detach()) < self.settings.stop_loss:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                taken += 1
                if self.settings.norm_constraint is not None:
                    eps = self.settings.norm_constraint
                    # The masters still hold the weights as they were before this edit.
                    with torch.no_grad():
                        for leaf, start in zip(leaves, self.masters, strict=True):
                            leaf.clamp_(min=start - eps, max=start + eps)
        updated = time.perf_counter()
        with torch.no_grad():
            for name, leaf in zip(self.module_names, leaves, strict=True):
                if not bool(torch.isfinite(leaf).all()):
                    raise NonFiniteError(
                        f"{NAME} edit {self.n_edits}: module {name} has non-finite weights"
                    )
            for leaf, master in zip(leaves, self.masters, strict=True):
                master.copy_(leaf)
            self._sync_weights()
        done = time.perf_counter()
        self.n_edits += 1
        self.last_steps = taken
        return EditStep(
            list(self.module_names),
            done - started,
            {"update": updated - started, "commit": done - updated},
        )

    def _sync_weights(self) -> None:
        """Round the fp32 masters of low-precision weights into the model (one rounding)."""
        for module, master, own in zip(self.modules, self.masters, self.own_master, strict=True):
            if own:
                module.weight.copy_(master)

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """The edited weights of the chosen modules (fp32 masters for low-precision weights)."""
        state = {
            "kind": STATE_KIND,
            "identity": self.identity(),
            "weights": {
                name: m.detach().clone()
                for name, m in zip(self.module_names, self.masters, strict=True)
            },
            "n_edits": self.n_edits,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Resume from :meth:`save_state` (refused if written under another configuration)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            raise CheckpointMismatchError(f"{path}: not an {NAME} editor state")
        check_identity(state["identity"], self.identity(), str(path))
        with torch.no_grad():
            for name, master in zip(self.module_names, self.masters, strict=True):
                master.copy_(state["weights"][name])
            self._sync_weights()
        self.n_edits = int(state["n_edits"])


def _forward_target(model: nn.Module, module_names: Sequence[str]) -> tuple[nn.Module, list[str]]:
    """The module to call (the decoder when it holds every chosen module) and the weights' names."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((name for name, mod in model.named_modules() if mod is decoder), None)
    if prefix and all(name.startswith(prefix + ".") for name in module_names):
        return decoder, [f"{name[len(prefix) + 1 :]}.weight" for name in module_names]
    return model, [f"{name}.weight" for name in module_names]


def build(
    settings: FTMConfig,
    model: nn.Module,
    tokenizer: Any,
    *,
    module_names: Sequence[str],
    seed: int,
    stats: Any = None,
) -> FTMEditor:
    """An FT-M editor; ``module_names`` are the model's candidate modules."""
    if stats is not None:
        raise ConfigError(f"baselines.{NAME}: uses no fitted statistics, but some were given")
    return FTMEditor(settings, model, tokenizer, module_names=module_names, seed=seed)


# What hiedit.editors.build_editor reads: the hyperparameter section's type.
CONFIG = FTMConfig
