"""From decoder hidden states to the logits the model's own forward produces.

The editor runs the decoder and the LM head separately, so that the head (the largest matrix of a
small model) sees only the answer positions. Whatever a causal-LM class does between its decoder
output and ``logits`` must then be repeated exactly here, or the captured gradients and the
training losses are taken on logits the model never produces. :func:`output_logits` is the one
place that does it; nothing else in the package turns hidden states into logits.

What each supported class does after its decoder (transformers 5.24, ``modeling_llama.py`` and
``modeling_gemma2.py``):

* ``llama`` (``LlamaForCausalLM``): ``logits = lm_head(h)``; no bias, no scaling.
* ``gemma2`` (``Gemma2ForCausalLM``): ``logits = lm_head(h)``, then final-logit soft-capping
  ``logits = cap · tanh(logits / cap)`` with ``cap = config.final_logit_softcapping`` (30 in
  Gemma-2-9B) unless it is ``None``.

Any other architecture is refused by name: one that scales its logits (Cohere's ``logit_scale``,
Granite's ``logits_scaling``) or caps them would be edited on the wrong logits without a word.
"""

from __future__ import annotations

from hiedit.errors import ModelError

# model_type -> the causal-LM class whose forward the rule below was read from.
SUPPORTED_CLASSES = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM"}


def model_type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def check_supported(model) -> str:
    """The model's type if :func:`output_logits` knows its head; otherwise a :class:`ModelError`."""
    kind = model_type(model)
    expected = SUPPORTED_CLASSES.get(kind)
    if expected is None:
        raise ModelError(
            f"model type {kind!r} ({type(model).__name__}) is not supported: the editor knows the "
            f"output head of {', '.join(sorted(SUPPORTED_CLASSES))} only"
        )
    if expected not in {cls.__name__ for cls in type(model).__mro__}:
        raise ModelError(
            f"model type {kind!r} is supported as {expected}, but the model is a "
            f"{type(model).__name__} whose forward may map hidden states to logits differently"
        )
    return kind


def output_logits(model, hidden):
    """The logits ``model``'s forward gives for final decoder hidden states ``hidden`` (… × H).

    ``hidden`` is the decoder's ``last_hidden_state`` (after the final norm), at any selection
    of positions; the result has the head's dtype, like the model's own ``logits``.
    """
    kind = check_supported(model)
    logits = model.get_output_embeddings()(hidden)
    if kind == "gemma2":
        cap = model.config.final_logit_softcapping
        if cap is not None:
            # The same operations in the same order as the forward, so bf16 rounds alike.
            logits = logits / cap
            logits = logits.tanh()
            logits = logits * cap
    return logits
