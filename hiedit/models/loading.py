"""Load a backbone and its tokenizer from a model entry of the configuration, and check its profile.

A model entry (``models.<name>`` in ``config.yaml``) says where the weights come from:
``local`` (a saved folder, e.g. the converted embedded model), ``hub`` (a Hugging Face hub name,
needs network and often a licence acceptance) or ``random`` (a small Llama built from a config, for
tests and the smoke setup). Its ``modules`` list names the candidate modules the editor may touch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hiedit.errors import ModelError

log = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


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
        from hiedit.models.tiny import build_byte_tokenizer, build_tiny_llama

        tokenizer = build_byte_tokenizer()
        model = build_tiny_llama(
            dict(entry["architecture"]), len(tokenizer), entry.get("init_seed", 0)
        )
        model = model.to(dtype=dtype)
    elif source in ("local", "hub"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        location = entry["path"] if source == "local" else entry["name"]
        if source == "local" and not (Path(location) / "config.json").is_file():
            raise ModelError(
                f"{location}: no model folder here (config.json missing); build it first"
            )
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    else:
        raise ModelError(f"model source {source!r} is not one of local, hub, random")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.to(device).eval().requires_grad_(False)
    check_profile(model, entry.get("modules", []))
    return model, tokenizer


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
