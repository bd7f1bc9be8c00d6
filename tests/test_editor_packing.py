"""Sequence packing: every token lands once, in order, and the packed forward is the padded one."""

from __future__ import annotations

import pytest
import torch
from editor_helpers import tiny_job, tiny_model, toy_records

from hiedit.data.tokenize import IGNORE_INDEX
from hiedit.editor.losses import packing_for, scoring_batch
from hiedit.editor.packing import Packing, supports_packing


def _batch():
    job = tiny_job()
    model, tok = tiny_model(job)
    return model, scoring_batch(tok, [[r] for r in toy_records(4)], 0.9, "cpu").batch


@pytest.mark.parametrize("capacity", [0, 80, 1000])
def test_every_token_lands_once_with_restarting_positions(capacity):
    _, batch = _batch()
    lengths = batch.attention_mask.sum(1).tolist()
    packing = Packing.of(batch, capacity)
    width = packing.input_ids.shape[1]
    assert width <= max(capacity, *lengths)
    valid = batch.attention_mask.bool()
    index = packing.flat_index[valid]
    assert sorted(index.tolist()) == sorted(set(index.tolist()))  # no position used twice
    assert (packing.flat_index[~valid] == -1).all()
    flat_ids = packing.input_ids.reshape(-1)
    torch.testing.assert_close(flat_ids[index], batch.input_ids[valid])
    flat_pos = packing.position_ids.reshape(-1)
    expected_pos = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)[valid]
    torch.testing.assert_close(flat_pos[index], expected_pos)
    # Nothing but the packed tokens and the fillers: fewer positions than the padded batch.
    if capacity >= 2 * max(lengths):  # two or more sequences per row: less than padded
        assert packing.input_ids.numel() < batch.input_ids.numel()
    assert int((packing.row_of_position >= 0).sum()) == sum(lengths)
    if capacity >= sum(lengths):
        assert packing.input_ids.shape[0] == 1


def test_answers_come_back_in_the_padded_row_major_order():
    _, batch = _batch()
    packing = Packing.of(batch, 80)
    hidden = torch.randn(*batch.input_ids.shape, 5)
    hidden[~batch.attention_mask.bool()] = 0
    packed = packing.scatter(hidden)
    assert packed.shape[:2] == packing.input_ids.shape
    positions = batch.labels != IGNORE_INDEX
    torch.testing.assert_close(packing.answers(packed, batch), hidden[positions])


def test_per_row_values_spread_over_their_positions_and_fillers_get_zero():
    _, batch = _batch()
    packing = Packing.of(batch, 80)
    per_row = torch.arange(1, batch.input_ids.shape[0] + 1, dtype=torch.float32)
    spread = packing.per_position(per_row)
    rows = packing.row_of_position
    torch.testing.assert_close(spread[rows >= 0], per_row[rows[rows >= 0]])
    assert (spread[rows < 0] == 0).all()


def test_packing_is_off_at_zero_and_for_decoders_that_cannot_attend_within_sequences():
    model, batch = _batch()
    assert supports_packing(model)
    assert packing_for(model, batch, 0) is None
    assert isinstance(packing_for(model, batch, 64), Packing)

    class Other(torch.nn.Module):
        config = type("Config", (), {"model_type": "gpt2"})()

    assert not supports_packing(Other())
    assert packing_for(Other(), batch, 64) is None
