"""Offline stand-ins for tests and the smoke setup: a byte-level tokenizer and a random small Llama.

Neither needs a download, so unit tests and the CI smoke workflow run on a machine with no model hub.
"""

from __future__ import annotations

from typing import Any

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


def build_tiny_llama(architecture: dict[str, Any], vocab_size: int, seed: int):
    """A randomly initialised ``LlamaForCausalLM`` from a small config (seeded, fp32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, **architecture)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()
