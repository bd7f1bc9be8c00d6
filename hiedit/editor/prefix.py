"""Reuse of the unedited lower layers: hidden states entering the first edited decoder layer.

Edits only touch candidate modules, so the decoder layers below the first one holding a
candidate compute the same hidden states for a given text at every step of every trajectory.
Training scores the same backtracked tuples up to ``back_depth`` times per step (under the base
weights, ω and the full mask), so caching those hidden states per token sequence and running
only the upper layers saves about a third of a training step on the embedded model.

Exactness needs three things of the decoder's forward (transformers 5.24), each checked here or
by the tests for every supported model type:

* ``inputs_embeds`` enter the first layer unchanged, so cached hidden states can be fed back as
  ``inputs_embeds``. Llama: yes. Gemma-2 multiplies its embeddings by sqrt(hidden_size), but
  inside its embedding module (``embed_scale``), not in the decoder's forward, so a cached state is
  not scaled a second time; an embedding without ``embed_scale`` turns the cache off.
* Layer ``i`` gets its attention mask from its own index: Gemma-2 alternates sliding-window and
  full attention, looked up in ``config.layer_types`` by the position of a layer in the list the
  forward iterates. Running only the upper layers shifts that position, so the upper pass uses a
  config whose ``layer_types`` are sliced alike.
* Nothing else depends on the layer position or crosses layers: rotary embeddings depend on the
  positions only, and Gemma-2's attention soft-capping is applied inside each attention module.

Other model types report ``supported = False`` and callers run the whole model.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from hiedit.data.tokenize import Batch
from hiedit.editor.packing import Packing

# Decoders whose forward is exact when split at a layer (see the module docstring).
SUPPORTED_MODEL_TYPES = ("llama", "gemma2")


@contextmanager
def _swap(
    decoder: nn.Module, layers: nn.ModuleList, norm: nn.Module | None, first: int = 0
) -> Iterator[None]:
    """Run ``decoder`` on ``layers`` (decoder layers ``first`` and up) and ``norm``."""
    saved_layers, saved_norm, saved_config = decoder.layers, decoder.norm, decoder.config
    decoder.layers = layers
    if norm is not None:
        decoder.norm = norm
    layer_types = getattr(saved_config, "layer_types", None)
    if layer_types is not None and first > 0:
        config = copy.copy(saved_config)
        config.layer_types = list(layer_types[first : first + len(layers)])
        decoder.config = config
    try:
        yield
    finally:
        decoder.layers = saved_layers
        decoder.norm = saved_norm
        decoder.config = saved_config


class PrefixCache:
    """Per-sequence hidden states at the input of decoder layer ``first`` (bounded LRU cache)."""

    def __init__(self, model: nn.Module, modules: Sequence[nn.Module], max_entries: int = 4096):
        self.model = model
        self.decoder = model.get_decoder()
        layers = getattr(self.decoder, "layers", None)
        model_type = getattr(model.config, "model_type", None)
        self.supported = (
            model_type in SUPPORTED_MODEL_TYPES
            and isinstance(layers, nn.ModuleList)
            and hasattr(self.decoder, "norm")
        )
        if model_type == "gemma2":
            self.supported = self.supported and hasattr(
                getattr(self.decoder, "embed_tokens", None), "embed_scale"
            )
        self.first = 0
        if self.supported:
            wanted = {id(m) for m in modules}
            holders = [
                i for i, layer in enumerate(layers) if any(id(m) in wanted for m in layer.modules())
            ]
            self.first = min(holders) if holders else 0
            self.supported = self.first > 0
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()

    def _key(self, batch: Batch, row: int) -> tuple[int, ...]:
        length = int(batch.attention_mask[row].sum())
        return tuple(batch.input_ids[row, :length].tolist())

    @torch.no_grad()
    def _compute(self, batch: Batch, rows: list[int]) -> None:
        sub = Batch(batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows])
        lower = nn.ModuleList(list(self.decoder.layers)[: self.first])
        with _swap(self.decoder, lower, nn.Identity()):
            hidden = self.decoder(**sub.model_inputs(), use_cache=False).last_hidden_state
        for i, row in enumerate(rows):
            key = self._key(batch, row)
            self._cache[key] = hidden[i, : len(key)].clone()
            if len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

    def hidden(self, batch: Batch) -> torch.Tensor:
        """Hidden states (B × T × H) entering layer ``first``; zeros at padded positions."""
        keys = [self._key(batch, row) for row in range(batch.input_ids.shape[0])]
        missing = [row for row, key in enumerate(keys) if key not in self._cache]
        if missing:
            self._compute(batch, missing)
        first = self._cache[keys[0]]
        out = first.new_zeros(batch.input_ids.shape[0], batch.input_ids.shape[1], first.shape[-1])
        for row, key in enumerate(keys):
            self._cache.move_to_end(key)
            out[row, : len(key)] = self._cache[key]
        return out

    def last_hidden_state(self, batch: Batch, packing: Packing | None = None) -> torch.Tensor:
        """The decoder's output for ``batch``, running only layers ``first`` and above.

        With ``packing`` the upper layers run on the packed rows and the output is packed too
        (P × C × H, see :class:`~hiedit.editor.packing.Packing`).
        """
        if not self.supported:
            return decoder_output(self.decoder, batch, packing)
        hidden = self.hidden(batch)
        upper = nn.ModuleList(list(self.decoder.layers)[self.first :])
        with _swap(self.decoder, upper, None, self.first):
            if packing is None:
                out = self.decoder(
                    inputs_embeds=hidden, attention_mask=batch.attention_mask, use_cache=False
                )
            else:
                out = self.decoder(
                    inputs_embeds=packing.scatter(hidden),
                    position_ids=packing.position_ids,
                    use_cache=False,
                )
        return out.last_hidden_state


def decoder_output(
    decoder: nn.Module, batch: Batch, packing: Packing | None = None
) -> torch.Tensor:
    """The whole decoder's last hidden states for ``batch`` (packed rows with ``packing``)."""
    if packing is None:
        return decoder(**batch.model_inputs(), use_cache=False).last_hidden_state
    return decoder(
        input_ids=packing.input_ids, position_ids=packing.position_ids, use_cache=False
    ).last_hidden_state
