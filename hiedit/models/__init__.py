"""Backbones: loading from a config entry, profile checks, the output head, tiny test models."""

from hiedit.models.head import output_logits
from hiedit.models.loading import (
    candidate_modules,
    check_backbone,
    check_profile,
    load_model,
    torch_dtype,
)

__all__ = [
    "candidate_modules",
    "check_backbone",
    "check_profile",
    "load_model",
    "output_logits",
    "torch_dtype",
]
