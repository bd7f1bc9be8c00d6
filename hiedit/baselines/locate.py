"""Locate-then-edit machinery shared by MEMIT and AlphaEdit: targets, keys, the edit loop, state.

Both editors change the MLP down-projections ``W`` of a range of decoder layers so that the
residual stream at the *last subject token* of the edit prompt carries a target vector ``z``.
They differ only in how one layer's weight change is solved from its keys and residuals
(:meth:`LocateThenEdit.solve`), which is why everything else lives here, once.

One edit step for records ``r`` (Meng et al., ICLR 2023, §4.3, and the public MEMIT code):

1. **Target** (:func:`optimise_target`, per record): a vector ``δ`` is added to the output of the
   last edited decoder layer at the last subject token of several prompts — the edit prompt and
   the same prompt after a few short prefixes — and of a ``"{subject} is a"`` prompt. A few Adam
   steps minimise the mean NLL of the new object after each prompt, plus ``kl_factor`` times
   ``KL(p_δ ‖ p_0)`` of the next-token distribution at the subject of the ``is a`` prompt, plus
   ``v_weight_decay · ‖δ‖ / ‖h‖²``; after each step ``‖δ‖`` is clamped to
   ``clamp_norm_factor · ‖h‖`` (``h``: the unedited output at the edit prompt's subject). The
   loop stops early when the loss is below ``v_stop_loss``; the last of the ``v_num_grad_steps``
   iterations only evaluates. ``z = h + δ``. The decoder layers below the last edited one see
   the same inputs at every step and do not depend on ``δ``: their hidden states are computed
   once per record (:class:`hiedit.editor.prefix.PrefixCache`) and each step runs only the
   layers from the last edited one up.
2. **Spread**: for the edited layers in order ``i = 0 … L−1``, at the current weights (earlier
   layers of this step already changed): the key ``k`` of a record is the down-projection's input
   at the last subject token, averaged as MEMIT does (the mean of the plain prompt's key and the
   mean over the prefixed prompts' keys); the residual is ``(z − h_now) / (L − i)`` where
   ``h_now`` is the last edited layer's output at the plain prompt's subject now. The layer's
   update is solved from keys and residuals and committed before the next layer is visited.

MEMIT samples its prefixes from the model once per run; here they are sampled once at build
time from the unedited model with a seeded generator (top-5 sampling from the starts "The",
"Therefore", "Because", "I", "You"), so a run is reproducible, and kept in the editor state.

**Subject token.** The key and the target sit at the last token of the record's ``subject``
(``EditRecord.subject``) in the prompt, its last occurrence if it occurs more than once. A record
whose subject is empty or does not occur in the prompt falls back to the prompt's last token
(ROME's ``last`` strategy) and is counted in :attr:`LocateThenEdit.fallbacks`; with an empty
subject there is also no ``is a`` prompt, so its target has no KL term.

Every update is rank ≤ (records per step) and is committed as a pair of low-rank factors through
``lowrank_kernels.lowrank_update_`` (exact precision buffers for bf16/fp16 weights); no dense
``d_out × d_in`` matrix is formed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiedit.errors import CheckpointMismatchError, ConfigError, ModelError
from hiedit.models.head import output_logits

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hiedit.baselines.key_stats import KeyStats
    from hiedit.data.records import EditRecord

log = logging.getLogger(__name__)

PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")
PREFIX_TOP_K = 5


# --- hyperparameter sections --------------------------------------------------------------------


def _check_value(name: str, value: Any, meta: Mapping[str, Any], where: str) -> Any:
    key = f"{where}.{name}"
    kind = meta.get("kind")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
    elif kind is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
    if meta.get("template") and value.count("{}") != 1:
        raise ConfigError(f"{key}: must contain '{{}}' once (the layer index), got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}: must be one of {list(meta['choices'])}, got {value!r}")
    if "gt" in meta and not value > meta["gt"]:
        raise ConfigError(f"{key}: must be > {meta['gt']}, got {value!r}")
    if "ge" in meta and not value >= meta["ge"]:
        raise ConfigError(f"{key}: must be >= {meta['ge']}, got {value!r}")
    return value


def _layer_table(value: Any, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.layers: must be a mapping model name -> layer list")
    table = {}
    for model_name, layers in value.items():
        key = f"{where}.layers.{model_name}"
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError(f"{key}: must be a non-empty list of layer indices")
        for item in layers:
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise ConfigError(f"{key}: layer indices must be integers >= 0, got {item!r}")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"{key}: a layer is listed twice")
        table[str(model_name)] = tuple(sorted(layers))
    return table


def read_section(cls, values: Mapping[str, Any] | None, where: str):
    """An instance of the frozen dataclass ``cls`` from a config section; errors name the key.

    Missing keys take the dataclass defaults (the public configurations' values); unknown keys
    and bad values raise :class:`ConfigError` naming ``where.key``. Field metadata says what a
    value must be (``kind``, ``gt``, ``ge``, ``choices``; ``layers`` is a model -> layers table).
    """
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    parsed = {}
    for name, value in values.items():
        meta = fields[name].metadata
        if meta.get("kind") == "layers":
            parsed[name] = _layer_table(value, where)
        else:
            parsed[name] = _check_value(name, value, meta, where)
    return cls(**parsed)


def setting(default, **meta):
    """A dataclass field with the checks :func:`read_section` applies (see there)."""
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class LocateConfig:
    """Where to edit and how the target ``z`` is found (MEMIT's ``compute_z`` hyperparameters).

    Defaults: the public Llama-3-8B configuration of MEMIT and AlphaEdit (AlphaEdit repository,
    ``hparams/MEMIT/Llama3-8B.json`` and ``hparams/AlphaEdit/Llama3-8B.json``, which agree on
    these keys); ``v_stop_loss``, ``n_prefixes`` and ``prefix_tokens`` are constants of MEMIT's
    code (``compute_z.py``, ``memit_main.get_context_templates``).
    """

    layers: dict[str, tuple[int, ...]] = dataclasses.field(
        default_factory=dict, metadata={"kind": "layers"}
    )
    module_template: str = setting("model.layers.{}.mlp.down_proj", kind=str, template=True)
    v_num_grad_steps: int = setting(25, kind=int, ge=1)
    v_lr: float = setting(0.1, kind=float, gt=0)
    v_weight_decay: float = setting(0.5, kind=float, ge=0)
    clamp_norm_factor: float = setting(0.75, kind=float, gt=0)
    kl_factor: float = setting(0.0625, kind=float, ge=0)
    v_stop_loss: float = setting(0.05, kind=float, ge=0)
    n_prefixes: int = setting(5, kind=int, ge=0)
    prefix_tokens: int = setting(10, kind=int, ge=1)
    commit_precision: str = setting(
        "auto", kind=str, choices=("auto", "nearest", "compensated", "master")
    )

    def module_names(self, model_name: str, where: str) -> list[str]:
        """The down-projections this editor edits on ``model_name`` (``layers`` × template)."""
        if model_name not in self.layers:
            raise ConfigError(
                f"{where}.layers: no layers for model {model_name!r} "
                f"(listed: {', '.join(sorted(self.layers)) or 'none'})"
            )
        return [self.module_template.format(layer) for layer in self.layers[model_name]]

    def fingerprint(self) -> dict[str, Any]:
        """The values that change an edit (the layer table enters through the module names)."""
        out = dataclasses.asdict(self)
        out.pop("layers")
        return out


# --- prompts, subject positions -----------------------------------------------------------------


def subject_last_index(tokenizer, text: str, subject: str) -> tuple[int, bool]:
    """Position of the last token of ``subject``'s last occurrence in ``text`` (BOS included).

    Returns ``(index, found)``; when the subject is empty or absent, the text's last token and
    ``False``.
    """
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    start = text.rfind(subject) if subject else -1
    if start < 0:
        return len(ids) - 1, False
    end = start + len(subject)
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        for index, (lo, hi) in enumerate(offsets):
            if lo < hi and lo <= end - 1 < hi:
                return index, True
    # Tokenizers without offsets: the tokens of the text up to the subject's end.
    return len(tokenizer(text[:end], add_special_tokens=True)["input_ids"]) - 1, True


def generate_prefixes(model, tokenizer, n: int, length: int, seed: int) -> list[str]:
    """``n`` short texts sampled (top-5, seeded) from the model, for MEMIT's prompt prefixes.

    Each starts from one of :data:`PREFIX_STARTS` (cycled) and grows to ``length`` tokens (special
    tokens not counted); braces are replaced by spaces, as MEMIT does.
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    device = next(model.parameters()).device
    special = set(tokenizer.all_special_ids)
    prefixes = []
    with torch.no_grad():
        for i in range(n):
            ids = list(tokenizer(PREFIX_STARTS[i % len(PREFIX_STARTS)])["input_ids"])
            while sum(t not in special for t in ids) < length:
                logits = model(torch.tensor([ids], device=device)).logits[0, -1].float().cpu()
                top = torch.topk(logits, min(PREFIX_TOP_K, logits.numel()))
                pick = torch.multinomial(torch.softmax(top.values, 0), 1, generator=generator)
                ids.append(int(top.indices[pick]))
            text = tokenizer.decode(ids, skip_special_tokens=True)
            prefixes.append(text.replace("{", " ").replace("}", " ").strip())
    return prefixes


def context_texts(prompt: str, prefixes: Sequence[str]) -> list[str]:
    """The plain prompt, then the prompt after each prefix (MEMIT's ``"<prefix>. {}"``)."""
    return [prompt] + [f"{prefix}. {prompt}" for prefix in prefixes]


# --- model plumbing -----------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a hook once everything needed from a forward pass has been recorded."""


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def pad_rows(tokenizer, rows: Sequence[Sequence[int]], device):
    import torch

    from hiedit.data.tokenize import pad_token_id

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[b, : len(row)] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Target:
    """The optimised target of one record at the last edited layer, and how it was reached."""

    z: torch.Tensor  # (d_model,) fp32
    h: torch.Tensor  # unedited output at the edit prompt's subject (fp32)
    nll: float  # mean NLL of the new object after the last evaluation
    steps: int  # Adam steps taken
    subject_found: bool


def optimise_target(
    model,
    tokenizer,
    record: EditRecord,
    z_layer: nn.Module,
    prefixes: Sequence[str],
    cfg: LocateConfig,
    *,
    reuse_lower_layers: bool = True,
) -> Target:
    """Step 1 of the module docstring for one record (MEMIT's ``compute_z``).

    ``reuse_lower_layers=False`` runs the whole decoder at every step (the reference the tests
    compare the cached path against; the result is the same).
    """
    import torch

    from hiedit.data.tokenize import IGNORE_INDEX, Batch, encode_qa
    from hiedit.editor.prefix import PrefixCache

    prompt, target, subject = record.edit.prompt, record.edit.target, record.subject
    texts = context_texts(prompt, prefixes)
    device = next(model.parameters()).device
    batch = encode_qa(tokenizer, texts, [target] * len(texts))
    lookups = [subject_last_index(tokenizer, text, subject) for text in texts]
    found = lookups[0][1]
    rows = [
        batch.input_ids[b, : int(batch.attention_mask[b].sum())].tolist() for b in range(len(texts))
    ]
    positions = [index for index, _ in lookups]
    kl_row = None
    if subject:
        kl_text = f"{subject} is a"
        kl_row = len(rows)
        rows.append(tokenizer(kl_text, add_special_tokens=True)["input_ids"])
        positions.append(subject_last_index(tokenizer, kl_text, subject)[0])
    input_ids, attention_mask = pad_rows(tokenizer, rows, device)
    labels = torch.full(input_ids.shape, IGNORE_INDEX, dtype=torch.long, device=device)
    labels[: len(texts), : batch.labels.shape[1]] = batch.labels.to(device)
    answer = labels != IGNORE_INDEX
    answer_rows = answer.nonzero()[:, 0]
    n_answer = answer[: len(texts)].sum(1).float()
    row_index = torch.arange(len(rows), device=device)
    pos_index = torch.tensor(positions, device=device)

    delta = torch.zeros(model.config.hidden_size, device=device, requires_grad=True)
    state: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        hidden = _hidden(output)
        if "h" not in state:
            state["h"] = hidden[0, positions[0]].detach().float().clone()
        shift = hidden.new_zeros(hidden.shape).index_put(
            (row_index, pos_index), delta.to(hidden.dtype).expand(len(rows), -1)
        )
        return _with_hidden(output, hidden + shift)

    # One cache per record: its rows are this record's texts only.
    prefix = PrefixCache(model, [z_layer], max_entries=len(rows)) if reuse_lower_layers else None
    scored = Batch(input_ids, attention_mask, labels)
    optimiser = torch.optim.Adam([delta], lr=cfg.v_lr)
    kl_init = None
    steps, nll_value = 0, float("nan")
    handle = z_layer.register_forward_hook(hook)
    try:
        for iteration in range(cfg.v_num_grad_steps):
            optimiser.zero_grad()
            with torch.enable_grad():
                if prefix is not None:
                    hidden = prefix.last_hidden_state(scored)
                else:
                    hidden = model.get_decoder()(
                        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                    ).last_hidden_state
                log_probs = torch.log_softmax(output_logits(model, hidden[answer]).float(), -1)
                picked = log_probs.gather(1, labels[answer][:, None])[:, 0]
                per_row = picked.new_zeros(len(texts)).index_add(0, answer_rows, picked)
                nll = -(per_row / n_answer).mean()
                loss = nll
                if kl_row is not None:
                    kl_log = torch.log_softmax(
                        output_logits(model, hidden[kl_row, positions[kl_row]][None]).float(), -1
                    )
                    if kl_init is None:
                        kl_init = kl_log.detach()
                    kl = (kl_log.exp() * (kl_log - kl_init)).sum(-1).mean()
                    loss = loss + cfg.kl_factor * kl
                h_norm = state["h"].norm()
                loss = loss + cfg.v_weight_decay * delta.norm() / h_norm**2
            nll_value = float(nll.detach())
            if float(loss.detach()) < cfg.v_stop_loss or iteration == cfg.v_num_grad_steps - 1:
                break
            loss.backward()
            optimiser.step()
            steps += 1
            with torch.no_grad():
                max_norm = cfg.clamp_norm_factor * h_norm
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    finally:
        handle.remove()
    h = state["h"]
    return Target(h + delta.detach(), h, nll_value, steps, found)


def keys_and_outputs(
    model,
    tokenizer,
    records: Sequence[EditRecord],
    prefixes: Sequence[str],
    module: nn.Module,
    z_layer: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys at ``module`` and the ``z_layer`` outputs, both at the last subject token, at the
    current weights: ``(n × d_in, n × d_model)`` in fp64, one row per record.

    The key is MEMIT's average (the plain prompt's key, averaged with the mean key of the prefixed
    prompts); the output is the plain prompt's.
    """
    import torch

    n_ctx = 1 + len(prefixes)
    texts, positions = [], []
    for record in records:
        for text in context_texts(record.edit.prompt, prefixes):
            texts.append(text)
            positions.append(subject_last_index(tokenizer, text, record.subject)[0])
    rows = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_rows(tokenizer, rows, device)
    row_index = torch.arange(len(rows), device=device)
    pos_index = torch.tensor(positions, device=device)
    seen: dict[str, torch.Tensor] = {}

    def key_hook(mod, args):
        seen["keys"] = args[0][row_index, pos_index].double()

    def out_hook(mod, args, output):
        seen["out"] = _hidden(output)[row_index, pos_index].double()
        raise _Stop

    handles = [module.register_forward_pre_hook(key_hook), z_layer.register_forward_hook(out_hook)]
    try:
        with torch.no_grad():
            model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if "keys" not in seen or "out" not in seen:
        raise ModelError("the edited module did not run before the last edited layer's output")
    keys = seen["keys"].reshape(len(records), n_ctx, -1)
    if n_ctx > 1:
        keys = 0.5 * (keys[:, 0] + keys[:, 1:].mean(1))
    else:
        keys = keys[:, 0]
    outputs = seen["out"].reshape(len(records), n_ctx, -1)[:, 0]
    return keys, outputs


def decoder_layer_index(model, module: nn.Module) -> int:
    """Index of the decoder layer that holds ``module`` (``ModelError`` if none does)."""
    for index, layer in enumerate(model.get_decoder().layers):
        if any(sub is module for sub in layer.modules()):
            return index
    raise ModelError("module is not inside a decoder layer")


# --- the editor ---------------------------------------------------------------------------------


@dataclass
class LayerUpdate:
    """One layer's update ``ΔW = Bᵀ A`` (fp64) for ``n`` records: ``a`` n × d_in, ``b`` n × d_out."""

    a: torch.Tensor
    b: torch.Tensor


class LocateThenEdit:
    """Common body of MEMIT and AlphaEdit (module docstring); subclasses provide :meth:`solve`.

    Satisfies ``hiedit.evaluation.stream.SequentialEditor``.
    """

    kind = "locate-then-edit"
    edits_per_step = 1

    def __init__(
        self,
        settings: LocateConfig,
        model,
        tokenizer,
        *,
        module_names: Sequence[str],
        seed: int,
        stats: KeyStats | None,
        where: str,
    ) -> None:
        import torch

        import lowrank_kernels

        if stats is None:
            raise ConfigError(
                f"{where}: needs the fitted key statistic (python -m hiedit baselines fit-stats)"
            )
        if not module_names:
            raise ConfigError(f"{where}: no modules to edit")
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.where = where
        self.device = next(model.parameters()).device
        available = dict(model.named_modules())
        placed = []
        for name in module_names:
            module = available.get(name)
            if module is None:
                raise ModelError(f"{where}: module {name} is not in {type(model).__name__}")
            if not isinstance(module, torch.nn.Linear):
                raise ModelError(f"{where}: module {name} is not nn.Linear")
            if module.out_features != model.config.hidden_size:
                raise ModelError(
                    f"{where}: module {name} writes {module.out_features} features, not the "
                    f"residual stream's {model.config.hidden_size} (edit the down-projections)"
                )
            try:
                layer = decoder_layer_index(model, module)
            except ModelError as err:
                raise ModelError(f"{where}: module {name}: {err}") from None
            placed.append((layer, name, module))
        placed.sort(key=lambda item: item[0])
        layers = [layer for layer, _, _ in placed]
        if len(set(layers)) != len(layers):
            raise ConfigError(f"{where}: two edited modules sit in the same decoder layer")
        if layers[-1] >= len(model.get_decoder().layers) - 1:
            raise ConfigError(
                f"{where}: the last edited layer ({layers[-1]}) is the model's last decoder "
                "layer; a target at the subject token there cannot reach the answer positions"
            )
        self.layer_indices = layers
        self.module_names = [name for _, name, _ in placed]
        self.modules = [module for _, _, module in placed]
        self.z_layer = model.get_decoder().layers[layers[-1]]
        self.stats_sha256 = stats.sha256
        self.second_moments = []
        for name, module in zip(self.module_names, self.modules, strict=True):
            if name not in stats.second_moments:
                raise ConfigError(
                    f"{where}: the key statistic ({stats.describe()}) has no entry for {name}"
                )
            moment = stats.second_moments[name]
            if tuple(moment.shape) != (module.in_features, module.in_features):
                raise ConfigError(
                    f"{where}: key statistic of {name} is {tuple(moment.shape)}, expected "
                    f"{(module.in_features, module.in_features)}"
                )
            self.second_moments.append(moment.to(self.device, torch.float64))
        self.precision = lowrank_kernels.PrecisionState(settings.commit_precision)
        self.prefixes = generate_prefixes(
            model, tokenizer, settings.n_prefixes, settings.prefix_tokens, self.seed
        )
        self.step = 0
        self.fallbacks = 0
        self.last_targets: list[Target] = []

    # --- to be provided by each editor ---

    def solve(self, index: int, keys: torch.Tensor, residuals: torch.Tensor) -> LayerUpdate:
        """The update of module ``index`` from keys (n × d_in) and residuals (n × d_out), fp64."""
        raise NotImplementedError

    def after_step(self, records: Sequence[EditRecord]) -> None:
        """Called once a step's updates are all committed (AlphaEdit accumulates keys here)."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    # --- the step ---

    def targets(self, records: Sequence[EditRecord]) -> list[Target]:
        found = []
        for record in records:
            target = optimise_target(
                self.model, self.tokenizer, record, self.z_layer, self.prefixes, self.settings
            )
            if not target.subject_found:
                self.fallbacks += 1
                log.warning(
                    "record %s: subject %r not in the prompt; keys and target at the last token",
                    record.record_id,
                    record.subject,
                )
            found.append(target)
        return found

    def commit(self, index: int, update: LayerUpdate) -> None:
        import torch

        from hiedit.editor.commit import commit_update
        from hiedit.editor.lowlevel import Factors

        one = torch.ones((), device=update.a.device)
        factors = Factors(update.a.to(torch.float32), update.b.to(torch.float32), one)
        commit_update(
            [self.modules[index]],
            [factors],
            [True],
            self.precision,
            names=[self.module_names[index]],
            step=self.step,
        )

    def edit_records(self, records: Sequence[EditRecord]):
        """Edit and commit ``records`` in place (module docstring); returns an ``EditStep``."""
        import torch

        from hiedit.editor.api import EditStep

        if not records:
            raise ValueError("edit_records needs at least one record")
        phases = {"capture": 0.0, "update": 0.0, "commit": 0.0}
        start = time.perf_counter()
        targets = self.targets(records)
        z = torch.stack([t.z for t in targets]).to(self.device, torch.float64)
        self.last_targets = targets
        phases["capture"] += time.perf_counter() - start
        n_layers = len(self.modules)
        for index, module in enumerate(self.modules):
            tick = time.perf_counter()
            keys, outputs = keys_and_outputs(
                self.model, self.tokenizer, records, self.prefixes, module, self.z_layer
            )
            residuals = (z - outputs) / (n_layers - index)
            tock = time.perf_counter()
            update = self.solve(index, keys, residuals)
            tuck = time.perf_counter()
            self.commit(index, update)
            done = time.perf_counter()
            phases["capture"] += tock - tick
            phases["update"] += tuck - tock
            phases["commit"] += done - tuck
        tick = time.perf_counter()
        self.after_step(records)
        phases["update"] += time.perf_counter() - tick
        self.step += 1
        return EditStep(list(self.module_names), time.perf_counter() - start, phases)

    # --- state ---

    def identity(self) -> dict[str, Any]:
        """What a saved state must have been written under to be resumed here."""
        return {
            "editor": self.kind,
            "settings": self.settings.fingerprint(),
            "module_names": list(self.module_names),
            "key_stats_sha256": self.stats_sha256,
            "seed": self.seed,
        }

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """Weights of the edited modules, precision buffers, prefixes, step (written atomically)."""
        import torch

        from hiedit.atomic import atomic_path

        named = dict(zip(self.module_names, [m.weight for m in self.modules], strict=True))
        state = {
            "kind": self.kind,
            "identity": self.identity(),
            "weights": {name: w.detach().clone() for name, w in named.items()},
            "precision": self.precision.state_dict(named),
            "prefixes": list(self.prefixes),
            "step": self.step,
            "fallbacks": self.fallbacks,
            "extra": self.extra_state(),
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Resume from :meth:`save_state`; a state written under another config is refused."""
        import torch

        state = torch.load(Path(path), map_location=self.device, weights_only=False)
        if not isinstance(state, dict) or state.get("kind") != self.kind:
            raise CheckpointMismatchError(
                f"{path}: not a {self.kind} editor state (kind {state.get('kind')!r})"
                if isinstance(state, dict)
                else f"{path}: not an editor state"
            )
        expected = self.identity()
        differ = [
            key
            for key in sorted(set(expected) | set(state["identity"]))
            if expected.get(key) != state["identity"].get(key)
        ]
        if differ:
            raise CheckpointMismatchError(
                f"{path}: written under another configuration ({', '.join(differ)} differ)"
            )
        try:
            # Before the weights: a refused extra state leaves the model as it was.
            self.load_extra_state(state["extra"])
        except CheckpointMismatchError as err:
            raise CheckpointMismatchError(f"{path}: {err}") from None
        with torch.no_grad():
            for name, module in zip(self.module_names, self.modules, strict=True):
                module.weight.copy_(state["weights"][name])
        named = dict(zip(self.module_names, [m.weight for m in self.modules], strict=True))
        self.precision.load_state_dict(state["precision"], named)
        self.prefixes = list(state["prefixes"])
        self.step = int(state["step"])
        self.fallbacks = int(state["fallbacks"])
