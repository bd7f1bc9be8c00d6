"""Load a backbone and its tokenizer from a model entry of the configuration, and check its profile.

A model entry (``models.<name>`` in ``config.yaml``) says where the weights come from:
``local`` (a saved folder, e.g. the converted embedded model), ``hub`` (a Hugging Face hub name,
needs network and often a licence acceptance) or ``random`` (a small Llama or Gemma-2 built from a
config, ``family`` and ``architecture``, for tests and the smoke setup). Its ``modules`` list names
the candidate modules the editor may touch. Only architectures whose output head the editor knows
(:mod:`hiedit.models.head`) are loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hiedit.errors import ModelError
from hiedit.models.head import check_supported

log = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}

# Attention implementation forced per model type. Gemma-2 soft-caps its attention scores
# (cap · tanh(scores / cap), cap 50 in Gemma-2-9B); the eager implementation applies it and
# PyTorch's SDPA kernel cannot. Transformers 5.24 refuses SDPA for Gemma-2 and falls back to
# eager by itself; naming eager makes that a checked requirement of the editor (see
# check_backbone) instead of a library default that another release could change. Flash and
# flex attention also cap, but need optional packages or a compiler; prompts are short, so
# eager's T × T score matrix costs little.
ATTENTION = {"gemma2": "eager"}


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return getattr(torch, DTYPES[name])


def load_model(entry: Mapping[str, Any], *, device: str = "cpu"):
    """Return ``(model, tokenizer)`` for a model entry; the model is in eval mode, grads off."""
    source = entry["source"]
    dtype = torch_dtype(entry.get("dtype", "float32"))
    if source == "random":
        from hiedit.models.tiny import build_byte_tokenizer, build_tiny_model

        family = entry.get("family", "llama")
        tokenizer = build_byte_tokenizer()
        model = build_tiny_model(
            family,
            dict(entry["architecture"]),
            tokenizer,
            entry.get("init_seed", 0),
            attn_implementation=ATTENTION.get(family),
        )
        model = model.to(dtype=dtype)
    elif source in ("local", "hub"):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        location = entry["path"] if source == "local" else entry["name"]
        if source == "local" and not (Path(location) / "config.json").is_file():
            raise ModelError(
                f"{location}: no model folder here (config.json missing); build it first"
            )
        tokenizer = AutoTokenizer.from_pretrained(location)
        kind = AutoConfig.from_pretrained(location).model_type
        extra = {"attn_implementation": ATTENTION[kind]} if kind in ATTENTION else {}
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **extra)
    else:
        raise ModelError(f"model source {source!r} is not one of local, hub, random")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.to(device).eval().requires_grad_(False)
    check_backbone(model)
    check_profile(model, entry.get("modules", []))
    return model, tokenizer


def check_backbone(model) -> None:
    """Fail unless the editor reproduces this model's logits and attention exactly.

    The head must be one :func:`~hiedit.models.head.output_logits` knows, and a model type with a
    forced attention implementation must run under it.
    """
    kind = check_supported(model)
    wanted = ATTENTION.get(kind)
    found = getattr(model.config, "_attn_implementation", None)
    if wanted is not None and found != wanted:
        raise ModelError(
            f"{type(model).__name__} runs attention as {found!r}; the editor needs {wanted!r} "
            f"for model type {kind!r}"
        )


def check_profile(model, module_names: Sequence[str]) -> None:
    """Fail with every missing or non-linear candidate module named."""
    import torch

    available = dict(model.named_modules())
    missing = [name for name in module_names if name not in available]
    if missing:
        raise ModelError(
            f"{type(model).__name__} lacks {len(missing)} candidate module(s) of the profile: "
            + ", ".join(missing)
        )
    not_linear = [n for n in module_names if not isinstance(available[n], torch.nn.Linear)]
    if not_linear:
        raise ModelError(
            "candidate modules must be nn.Linear; these are not: " + ", ".join(not_linear)
        )


def candidate_modules(model, module_names: Sequence[str]):
    """The candidate ``nn.Linear`` modules in profile order (after :func:`check_profile`)."""
    check_profile(model, module_names)
    available = dict(model.named_modules())
    return [available[name] for name in module_names]
