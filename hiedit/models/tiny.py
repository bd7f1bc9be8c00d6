"""Offline stand-ins for tests and the smoke setup: a byte-level tokenizer and random small models.

A random model is a Llama or a Gemma-2 (the paper's two backbone families) built from a small
config. Neither needs a download, so unit tests and the CI smoke workflow run on a machine with no
model hub.
"""

from __future__ import annotations

from typing import Any

from hiedit.errors import ModelError

SPECIAL_TOKENS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>"}


def build_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens plus BOS/EOS/PAD.

    Behaves like a Llama tokenizer for our purposes: prepends BOS when asked for special tokens,
    keeps a leading space as its own byte, and right-pads with PAD.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(byte_alphabet))}
    for name in ("bos", "eos", "pad"):
        vocab[SPECIAL_TOKENS[name]] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    bos = SPECIAL_TOKENS["bos"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        padding_side="right",
    )
    return tokenizer


# family -> (config class, causal-LM class) in transformers.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
}


def build_tiny_model(
    family: str,
    architecture: dict[str, Any],
    tokenizer,
    seed: int,
    attn_implementation: str | None = None,
):
    """A randomly initialised causal LM of ``family`` from a small config (seeded, fp32, eval mode).

    ``architecture`` holds keyword arguments of the family's config class; a key the class does
    not define is an error (the config classes would keep it silently and ignore it). Gemma-2's
    special-token ids are set to the byte tokenizer's.
    """
    import dataclasses

    import transformers

    if family not in FAMILIES:
        raise ModelError(f"random model family {family!r} is not one of {sorted(FAMILIES)}")
    config_name, model_name = FAMILIES[family]
    config_cls = getattr(transformers, config_name)
    # The legacy rope keys are still accepted and moved into ``rope_parameters``.
    known = {field.name for field in dataclasses.fields(config_cls)} | {
        "rope_theta",
        "rope_scaling",
    }
    unknown = sorted(set(architecture) - known)
    if unknown:
        raise ModelError(
            f"architecture key(s) {', '.join(unknown)} are not {config_name} arguments"
        )
    values: dict[str, Any] = {"vocab_size": len(tokenizer)}
    if family == "gemma2":
        # Gemma-2's defaults are Gemma's own token ids; its pad id 0 would be a byte here, and the
        # embedding row of the pad id is initialised to zero.
        values.update(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    values.update(architecture)
    if attn_implementation is not None:
        values["attn_implementation"] = attn_implementation
    return _seeded_build(getattr(transformers, model_name), config_cls(**values), seed)


def build_tiny_llama(architecture: dict[str, Any], vocab_size: int, seed: int):
    """A randomly initialised ``LlamaForCausalLM`` from a small config (seeded, fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _seeded_build(LlamaForCausalLM, LlamaConfig(vocab_size=vocab_size, **architecture), seed)


def _seeded_build(model_cls, config, seed: int):
    import torch

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_cls(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()
