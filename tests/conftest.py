"""Shared fixtures. Plain helpers live in modules beside the tests (imported by name, not collected):
``editor_helpers`` (a tiny random Llama job, its model, toy records), ``kernel_helpers`` (random
weight groups) and ``workflow_helpers`` (a copy of the workflow and a Snakemake runner)."""

from __future__ import annotations

import pytest
from editor_helpers import tiny_job, tiny_model, toy_records


@pytest.fixture
def tiny_llama():
    """``(job, model, tokenizer)`` of the tiny random Llama (fresh weights for every test)."""
    job = tiny_job()
    model, tokenizer = tiny_model(job)
    return job, model, tokenizer


@pytest.fixture
def records():
    """Eight toy ZsRE-style records."""
    return toy_records(8)
