"""Reliability battery, API: malformed requests to ``HiEditor.edit`` are refused, naming the request
and the key, before anything changes (model weights and editor state compared bit for bit)."""

from __future__ import annotations

import re

import pytest
import torch
from editor_helpers import tiny_job, tiny_model

from hiedit.editor import load_editor
from hiedit.errors import ConfigError, DataError

GOOD = {"prompt": "What is the capital of Peru?", "target_new": "Oslo"}


@pytest.fixture(scope="module")
def editor():
    job = tiny_job()
    model, tokenizer = tiny_model(job)
    return load_editor(job, model, tokenizer)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).clone()


def snapshot(editor) -> dict[str, object]:
    """Every model parameter and buffer, the networks' state and the stream counters, as raw bytes."""
    state = {f"model.{k}": _bits(v) for k, v in editor.model.state_dict().items()}
    for part, values in editor.network_state().items():
        for key, value in (values or {}).items():
            state[f"{part}.{key}"] = _bits(value)
    state["step"] = editor.step
    state["rng"] = _bits(editor.rng.get_state())
    return state


def assert_unchanged(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    changed = [
        key
        for key in before
        if not (
            torch.equal(before[key], after[key])
            if isinstance(before[key], torch.Tensor)
            else before[key] == after[key]
        )
    ]
    assert changed == []


LONG_PROMPT = "What is the capital of " + "Peru and " * 200 + "Chile?"

MALFORMED = [
    pytest.param(
        [{"prompt": "What is the capital of Peru?"}],
        "request 0: missing key 'target_new'",
        id="no-target",
    ),
    pytest.param([{"target_new": "Oslo"}], "request 0: missing key 'prompt'", id="no-prompt"),
    pytest.param(
        [{"prompt": "", "target_new": "Oslo"}],
        "request 0: key 'prompt' must be a non-empty string",
        id="empty-prompt",
    ),
    pytest.param(
        [{"prompt": "   ", "target_new": "Oslo"}],
        "request 0: key 'prompt' must be a non-empty string",
        id="blank-prompt",
    ),
    pytest.param(
        [{"prompt": "Where?", "target_new": ""}],
        "request 0: key 'target_new' must be a non-empty string",
        id="empty-target",
    ),
    pytest.param(
        [{"prompt": "Where?", "target_new": 5}],
        "request 0: key 'target_new' must be a non-empty string",
        id="int-target",
    ),
    pytest.param(
        [{"prompt": None, "target_new": "Oslo"}],
        "request 0: key 'prompt' must be a non-empty string",
        id="none-prompt",
    ),
    pytest.param(
        [{**GOOD, "rephrase_prompt": ["Peru's capital?"]}],
        "request 0: key 'rephrase_prompt' must be a non-empty string",
        id="list-rephrase",
    ),
    pytest.param(
        [{**GOOD, "locality_ground_truth": 3.5}],
        "request 0: key 'locality_ground_truth' must be a non-empty string",
        id="float-locality",
    ),
    pytest.param(
        [{**GOOD, "subject": "Chile"}],
        "request 0: key 'subject' ('Chile') does not occur in the prompt",
        id="subject-not-in-prompt",
    ),
    pytest.param(
        [{**GOOD, "rephrase": "Peru's capital?"}],
        "request 0: unknown key 'rephrase' (did you mean 'rephrase_prompt'?)",
        id="unknown-key",
    ),
    pytest.param([{**GOOD, 7: "x"}], "request 0: unknown key 7", id="non-string-key"),
    pytest.param(
        ["What is the capital of Peru?"], "request 0: expected a dict, got str", id="string-request"
    ),
    pytest.param(
        [("What is the capital of Peru?", "Oslo")],
        "request 0: expected a dict, got tuple",
        id="tuple-request",
    ),
    pytest.param([None], "request 0: expected a dict, got NoneType", id="none-request"),
    pytest.param(
        "What is the capital of Peru?", "edit() takes a list of request dicts, got str", id="string"
    ),
    pytest.param(42, "edit() takes a list of request dicts, got int", id="int"),
    pytest.param({"Peru", "Oslo"}, "edit() takes a list of request dicts, got set", id="set"),
    # A bad request after good ones: the good ones must not have been applied either.
    pytest.param(
        [GOOD, GOOD, {"prompt": "Where?"}],
        "request 2: missing key 'target_new'",
        id="bad-after-good",
    ),
    pytest.param(
        [GOOD, {"prompt": LONG_PROMPT, "target_new": "Oslo"}],
        "edit() requests: record 1 (request-1): its edit tuple is",
        id="longer-than-context",
    ),
]


@pytest.mark.parametrize(("requests", "message"), MALFORMED)
def test_malformed_request_is_refused_before_anything_changes(editor, requests, message):
    before = snapshot(editor)
    with pytest.raises((ConfigError, DataError), match=re.escape(message)):
        editor.edit(requests)
    assert_unchanged(before, snapshot(editor))


def test_a_valid_request_after_refusals_edits_the_candidate_modules(editor):
    """The comparison above can see a change: the same editor does edit when the request is good."""
    before = snapshot(editor)
    steps = editor.edit(GOOD)
    after = snapshot(editor)
    assert len(steps) == 1 and after["step"] == before["step"] + 1
    changed = {
        key
        for key in before
        if key.startswith("model.") and not torch.equal(before[key], after[key])
    }
    assert changed and changed <= {f"model.{name}.weight" for name in steps[0].selected}
    editor.reset_model()
    assert_unchanged(before, snapshot(editor))
