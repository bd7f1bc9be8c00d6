"""Backbones: loading from a config entry, profile checks, the embedded model and tiny test models."""

from hiedit.models.loading import candidate_modules, check_profile, load_model, torch_dtype

__all__ = ["candidate_modules", "check_profile", "load_model", "torch_dtype"]
