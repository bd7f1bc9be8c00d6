"""Shared helpers of the editor tests: a tiny random Llama job and hand-made records."""

from __future__ import annotations

import copy
from typing import Any

import torch

from hiedit.data.records import QA, EditRecord
from hiedit.models import load_model

MODULES = [
    "model.layers.1.mlp.gate_proj",
    "model.layers.2.mlp.gate_proj",
    "model.layers.2.mlp.up_proj",
    "model.layers.3.mlp.up_proj",
]

_FACTS = [
    ("France", "Paris", "Rome"),
    ("Japan", "Tokyo", "Lima"),
    ("Peru", "Lima", "Oslo"),
    ("Chile", "Santiago", "Cairo"),
    ("Egypt", "Cairo", "Tokyo"),
    ("Norway", "Oslo", "Paris"),
    ("Italy", "Rome", "Madrid"),
    ("Spain", "Madrid", "Santiago"),
]


def tiny_job(variant: str = "hiedit", **sections: dict[str, Any]) -> dict[str, Any]:
    """A job configuration for the tiny random Llama; ``sections`` update editor/training/evaluation."""
    job = {
        "setup": "test",
        "model_name": "tiny-llama",
        "model": {
            "source": "random",
            "dtype": "float32",
            "init_seed": 0,
            "architecture": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 128,
                "tie_word_embeddings": True,
            },
            "modules": list(MODULES),
            "k": 2,
        },
        "dataset_name": "toy",
        "dataset": {"source": "geofacts", "format": "zsre"},
        "variant": variant,
        "seed": 0,
        "editor": {
            "style": "mend",
            "rank": 8,
            "n_blocks": 1,
            "lr": 1e-2,
            "token": "all",
            "router_hidden": 8,
            "gumbel_tau": 1.0,
            "update_normalizer_in_eval": True,
            "commit_precision": "auto",
        },
        "training": {
            "n_train": 8,
            "trajectory_length": 4,
            "n_trajectories": 2,
            "edits_per_step": 1,
            "back_depth": 2,
            "time_decay": 0.9,
            "loc_coef": 1.0,
            "l2_coef": 1e-4,
            "meta_lr": 1e-3,
            "step_size_lr": 1e-3,
            "side_path_chunk": 0,
            "pack_tokens": 0,
            "clip_norm": 1.0,
            "update_every": 2,
            "intrinsic_reward": True,
            "pathwise_gradient": True,
            "score_function": True,
            "trainable": "all",
            "validation_size": 0,
            "validation_edits": 4,
            "validate_every": 1,
            "patience": 0,
            "step_search_min": 1e-4,
            "step_search_max": 1e-2,
            "step_search_passes": 1,
            "warmup_records": 4,
            "checkpoint_every": 1,
        },
        "evaluation": {
            "n_edits": 4,
            "num_pre": 2,
            "n_curve_points": 1,
            "curve_sample": 2,
            "batch_size": 4,
            "static_k_modules": [],
            "final_sample": 0,
        },
    }
    from hiedit import registry

    spec = registry.get(variant)  # what the variant fixes, as hiedit.config.job_config writes it
    job["editor"].update(spec.editor_overrides)
    job["training"].update(spec.training_overrides)
    for section, values in sections.items():
        job[section].update(values)
    return copy.deepcopy(job)


def tiny_model(job: dict[str, Any]):
    """A fresh (model, tokenizer) for ``job`` (same weights every call)."""
    return load_model(job["model"])


def toy_records(n: int = 8) -> list[EditRecord]:
    """``n`` small ZsRE-style records (cycling through a few facts)."""
    records = []
    for i in range(n):
        subject, true, new = _FACTS[i % len(_FACTS)]
        other = _FACTS[(i + 3) % len(_FACTS)]
        records.append(
            EditRecord(
                record_id=f"toy-{i}",
                subject=subject,
                relation="capital",
                format="zsre",
                edit=QA(f"What is the capital of {subject}?", new),
                equiv=QA(f"Which city is the capital of {subject}?", new),
                unrel=QA(f"What is the capital of {other[0]}?", other[1]),
            )
        )
    return records


def candidate_weights(editor) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in editor.modules]
