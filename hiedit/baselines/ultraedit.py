"""UltraEdit (Gu et al., arXiv 2505.14679): training-free lifelong editing with a closed-form update.

One call of :meth:`UltraEditEditor.edit_records` is one *turn*: every record passed together is
edited by a single committed update. Per turn:

1. **capture** — at the current weights, keys ``K`` (the edited module's inputs) and value
   gradients ``G`` (the loss gradient at its outputs) of every edited module, at the answer
   positions (``token: ans``, the public configuration), by
   :func:`hiedit.editor.capture.capture_gradients` in forward/backward batches of
   ``capture_batch`` records;
2. **route** (the normaliser phase) — merge the turn's rows ``[K ; G]`` into a running per-feature
   mean and variance, one per module shape, that is never reset ("lifelong normalisation"); the
   turn's own rows are merged before they are normalised, as in the public code;
3. **update** — normalise ``[K̂ ; Ĝ]`` with those statistics and form the values
   ``v_i = −η · ‖k̂_i‖² · ĝ_i`` row by row; the update is the ridge solution on the *raw* keys,
   ``ΔWᵀ = (KᵀK + λ I)⁻¹ Kᵀ V``;
4. **commit** — ``W += ΔW`` in place through ``lowrank_kernels.lowrank_update_``, in the cheapest exact
   form: with ``n`` rows and ``n < d_in`` the push-through identity
   ``(KᵀK + λI)⁻¹Kᵀ = Kᵀ(KKᵀ + λI)⁻¹`` gives ``ΔW = Bᵀ A`` with ``A = K`` and
   ``B = (KKᵀ + λI)⁻¹ V`` (an n × n solve); otherwise the d_in × d_in system is solved and
   committed with an identity factor. Both solves run in float64.

Facts taken from the public code (``XiaojieGu/UltraEdit``: ``editor/ultraedit.py``,
``nets.py``, ``config/editor/ultraedit.yaml``, ``run.sh``): η = 1e-6, λ = 1 (an identity added to
``KᵀK``), answer-token rows, one normaliser per module shape over the concatenated rows with
``ε = float32 machine epsilon`` added to the standard deviation, 100 edits per turn captured in
batches of 10, and for Llama-3-8B the same twelve modules as HiEdit's candidates (``gate_proj`` of
layers 11–15, ``up_proj`` of layers 18–24).

Where this differs from the public code: the running statistics use the exact Chan merge
(:class:`hiedit.editor.normalizer.RunningNormalizer`; the public update adds ``n·Var`` with the
unbiased variance of the turn, i.e. ``n/(n−1)`` times the turn's sum of squares); the captured
loss is the project's (each record's mean answer NLL, summed over the records) where the public
code takes one mean over all answer tokens of a capture batch — a constant factor on all value
gradients cancels in the normalisation, only the relative weight of records with longer answers
differs; captures stay in memory (the public code writes them to disk every turn); commits are
exact for bf16/fp16 weights under ``commit_precision: auto``.

With one single-row turn the normaliser has seen only that row, so ``ĝ = 0`` and the first edit
is empty; from the second row on the statistics are defined. This is the method's behaviour, not a
special case (the public code produces NaN there).
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

import lowrank_kernels
from hiedit.atomic import atomic_path
from hiedit.data.tokenize import encode_qa
from hiedit.editor.api import EditStep, check_identity, group_key
from hiedit.editor.capture import TOKEN_MODES, capture_gradients
from hiedit.editor.commit import commit_update
from hiedit.editor.lowlevel import Factors
from hiedit.editor.normalizer import RunningNormalizer
from hiedit.errors import CheckpointMismatchError, ConfigError
from hiedit.models import candidate_modules
from hiedit.phases import EDIT_PHASES

log = logging.getLogger(__name__)

NAME = "ultraedit"
STATE_KIND = "ultraedit-state"
CANDIDATES = "candidates"
PRECISIONS = ("auto", "nearest", "compensated", "master")
# The public normaliser adds the float32 machine epsilon to the standard deviation.
NORMALIZER_EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class UltraEditConfig:
    """UltraEdit hyperparameters (``baselines.ultraedit``; defaults: the public code, module doc).

    ``lr``: η; ``ridge``: λ; ``edits_per_turn``: records per committed update (the stream hands
    this many to one :meth:`~UltraEditEditor.edit_records` call); ``capture_batch``: records per
    forward/backward within a turn (memory only: all of a turn's captures are taken at the same
    weights); ``token``: ``ans`` (answer positions) or ``all`` (every attended position);
    ``modules``: ``"candidates"`` or an explicit tuple of module paths.
    """

    lr: float = 1e-6
    ridge: float = 1.0
    edits_per_turn: int = 100
    capture_batch: int = 10
    token: str = "ans"
    modules: str | tuple[str, ...] = CANDIDATES
    commit_precision: str = "auto"

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], where: str = f"baselines.{NAME}"
    ) -> UltraEditConfig:
        """Read and check a config section; missing keys take the defaults, unknown keys fail."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        defaults = cls()
        get = lambda key: values.get(key, getattr(defaults, key))  # noqa: E731
        token = get("token")
        if token not in TOKEN_MODES:
            raise ConfigError(f"{where}.token: must be one of {list(TOKEN_MODES)}, got {token!r}")
        precision = get("commit_precision")
        if precision not in PRECISIONS:
            raise ConfigError(
                f"{where}.commit_precision: must be one of {list(PRECISIONS)}, got {precision!r}"
            )
        return cls(
            lr=_positive_number(get("lr"), f"{where}.lr"),
            ridge=_positive_number(get("ridge"), f"{where}.ridge"),
            edits_per_turn=_positive_integer(get("edits_per_turn"), f"{where}.edits_per_turn"),
            capture_batch=_positive_integer(get("capture_batch"), f"{where}.capture_batch"),
            token=token,
            modules=_modules(get("modules"), f"{where}.modules"),
            commit_precision=precision,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if isinstance(self.modules, tuple):
            out["modules"] = list(self.modules)
        return out


def _positive_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")
    return float(value)


def _positive_integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: must be an integer >= 1, got {value!r}")
    return value


def _modules(value: Any, key: str) -> str | tuple[str, ...]:
    if value == CANDIDATES:
        return CANDIDATES
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{key}: lists a module twice")
        return tuple(value)
    raise ConfigError(f"{key}: must be {CANDIDATES!r} or a non-empty list of module paths")


def ridge_factors(
    keys: torch.Tensor, values: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(A, B)`` with ``Bᵀ A = ((KᵀK + λI)⁻¹ Kᵀ V)ᵀ`` for keys K (n × d_in), values V.

    The smaller of the n × n (push-through) and d_in × d_in systems is solved, in float64.
    """
    n, d_in = keys.shape
    d_out = values.shape[1]
    k64, v64 = keys.double(), values.double()
    if n < d_in:
        gram = k64 @ k64.t()
        gram.diagonal().add_(ridge)
        b = torch.linalg.solve(gram, v64)  # n × d_out
        return keys.float(), b.float()
    gram = k64.t() @ k64
    gram.diagonal().add_(ridge)
    shift_t = torch.linalg.solve(gram, k64.t() @ v64)  # ΔWᵀ, d_in × d_out
    if d_in <= d_out:
        eye = torch.eye(d_in, dtype=torch.float32, device=keys.device)
        return eye, shift_t.float()
    eye = torch.eye(d_out, dtype=torch.float32, device=keys.device)
    return shift_t.t().float().contiguous(), eye


class UltraEditEditor:
    """Sequential UltraEdit over ``module_names`` (see the module docstring)."""

    def __init__(
        self,
        settings: UltraEditConfig,
        model: nn.Module,
        tokenizer: Any,
        *,
        module_names: Sequence[str],
        seed: int = 0,
    ) -> None:
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.seed = int(seed)  # nothing is drawn at random; kept for the run's record
        names = module_names if settings.modules == CANDIDATES else settings.modules
        self.module_names: list[str] = list(names)
        self.modules: list[nn.Linear] = candidate_modules(model, self.module_names)
        self.device = self.modules[0].weight.device
        # The stream reads this to know how many records to hand over per call.
        self.edits_per_step = settings.edits_per_turn
        self.groups = [group_key(m) for m in self.modules]
        self.normalizers: dict[str, RunningNormalizer] = {}
        for module, key in zip(self.modules, self.groups, strict=True):
            if key not in self.normalizers:
                dim = module.in_features + module.out_features
                self.normalizers[key] = RunningNormalizer(dim, eps=NORMALIZER_EPS).to(self.device)
        self.precision = lowrank_kernels.PrecisionState(settings.commit_precision)
        self.n_turns = 0
        self.n_records = 0
        self._short_turn = False
        self._warned_short = False

    def identity(self) -> dict[str, Any]:
        """What a saved state depends on (compared on load)."""
        return {
            "editor": NAME,
            "modules": list(self.module_names),
            "dtypes": [str(m.weight.dtype) for m in self.modules],
            **{f"{NAME}.{k}": v for k, v in self.settings.to_dict().items()},
        }

    def capture(self, records: Sequence[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and value gradients ``(K, G)`` of every module over all records of the turn."""
        keys: list[list[torch.Tensor]] = [[] for _ in self.modules]
        grads: list[list[torch.Tensor]] = [[] for _ in self.modules]
        size = self.settings.capture_batch
        for start in range(0, len(records), size):
            qas = [r.edit for r in records[start : start + size]]
            batch = encode_qa(self.tokenizer, [q.prompt for q in qas], [q.target for q in qas])
            captures, _ = capture_gradients(
                self.model, self.modules, batch.to(self.device), self.settings.token
            )
            for index, cap in enumerate(captures):
                keys[index].append(cap.u)
                grads[index].append(cap.delta)
        return [(torch.cat(k), torch.cat(g)) for k, g in zip(keys, grads, strict=True)]

    def factors(self, index: int, keys: torch.Tensor, grads: torch.Tensor) -> Factors:
        """The update of module ``index`` from its turn's rows (after the normaliser update)."""
        d_in = keys.shape[1]
        rows = self.normalizers[self.groups[index]](torch.cat([keys, grads], dim=1))
        keys_hat, grads_hat = rows[:, :d_in], rows[:, d_in:]
        values = -self.settings.lr * keys_hat.pow(2).sum(1, keepdim=True) * grads_hat
        a, b = ridge_factors(keys, values, self.settings.ridge)
        return Factors(a, b, torch.ones((), device=keys.device))

    def edit_records(self, records: Sequence[Any]) -> EditStep:
        """One turn: all ``records`` are edited by one committed update (module docstring)."""
        if not records:
            raise ValueError("edit_records needs at least one record")
        if len(records) > self.settings.edits_per_turn:
            raise ValueError(
                f"{len(records)} records in one turn; baselines.{NAME}.edits_per_turn is "
                f"{self.settings.edits_per_turn}"
            )
        if self._short_turn and not self._warned_short:
            # Only the last turn of a stream may be short: the caller feeds too few per call.
            log.warning(
                "%s: turns of fewer than edits_per_turn = %d records were edited one after "
                "another; the caller should pass that many records per call",
                NAME,
                self.settings.edits_per_turn,
            )
            self._warned_short = True
        self._short_turn = len(records) < self.settings.edits_per_turn
        ticks = [time.perf_counter()]
        rows = self.capture(records)
        ticks.append(time.perf_counter())
        with torch.no_grad():
            for index, (keys, grads) in enumerate(rows):
                self.normalizers[self.groups[index]].update(torch.cat([keys, grads], dim=1))
            ticks.append(time.perf_counter())
            factors = [self.factors(i, k, g) for i, (k, g) in enumerate(rows)]
            ticks.append(time.perf_counter())
        commit_update(
            self.modules,
            factors,
            [True] * len(self.modules),
            self.precision,
            names=self.module_names,
            step=self.n_turns,
        )
        ticks.append(time.perf_counter())
        self.n_turns += 1
        self.n_records += len(records)
        phases = {name: ticks[i + 1] - ticks[i] for i, name in enumerate(EDIT_PHASES)}
        return EditStep(list(self.module_names), ticks[-1] - ticks[0], phases)

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """The edited weights, the precision buffers and the lifelong normaliser statistics."""
        named = dict(zip(self.module_names, [m.weight for m in self.modules], strict=True))
        state = {
            "kind": STATE_KIND,
            "identity": self.identity(),
            "weights": {name: w.detach().clone() for name, w in named.items()},
            "precision": self.precision.state_dict(named),
            "normalizers": {
                key: {k: v.detach().clone() for k, v in norm.state_dict().items()}
                for key, norm in self.normalizers.items()
            },
            "n_turns": self.n_turns,
            "n_records": self.n_records,
            "short_turn": self._short_turn,
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
            for name, module in zip(self.module_names, self.modules, strict=True):
                module.weight.copy_(state["weights"][name])
        named = dict(zip(self.module_names, [m.weight for m in self.modules], strict=True))
        self.precision.load_state_dict(state["precision"], named)
        for key, norm in self.normalizers.items():
            norm.load_state_dict(state["normalizers"][key])
        self.n_turns = int(state["n_turns"])
        self.n_records = int(state["n_records"])
        self._short_turn = bool(state["short_turn"])


def build(
    settings: UltraEditConfig,
    model: nn.Module,
    tokenizer: Any,
    *,
    module_names: Sequence[str],
    seed: int,
    stats: Any = None,
) -> UltraEditEditor:
    """An UltraEdit editor; ``module_names`` are the model's candidate modules."""
    if stats is not None:
        raise ConfigError(f"baselines.{NAME}: uses no fitted statistics, but some were given")
    return UltraEditEditor(settings, model, tokenizer, module_names=module_names, seed=seed)


# What hiedit.editors.build_editor reads: the hyperparameter section's type.
CONFIG = UltraEditConfig
