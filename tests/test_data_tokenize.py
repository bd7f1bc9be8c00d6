"""Teacher-forcing tokenisation: leading space, BOS, right padding and pre-shifted labels."""

from __future__ import annotations

import pytest
import torch

from hiedit.data import QA, EditRecord, encode_qa, encode_qa_pair, encode_role
from hiedit.data.tokenize import IGNORE_INDEX, answer_positions, answer_text
from hiedit.models.tiny import build_byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


def _bpe_tokenizer(with_pad: bool):
    """A GPT-2/SmolLM2-style byte-level BPE with real merges, trained on a small fixed text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = ["The capital of France is Paris. The capital of Italy is Rome."] * 50
    core.train_from_iterator(text, trainer=trainer)
    kwargs = {"eos_token": "<|endoftext|>", "padding_side": "left"}
    if with_pad:
        kwargs["pad_token"] = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=core, **kwargs)


def _decode_labels(tok, labels_row):
    return tok.decode(labels_row[labels_row != IGNORE_INDEX].tolist())


def test_answer_text_adds_one_space():
    assert answer_text("Paris") == " Paris"
    assert answer_text(" Paris") == " Paris"


def test_single_pair_layout(tok):
    batch = encode_qa(tok, ["Capital of France:"], ["Paris"])
    prompt_ids = tok("Capital of France:")["input_ids"]
    answer_ids = tok(" Paris", add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tok.bos_token_id
    assert batch.input_ids[0].tolist() == prompt_ids + answer_ids[:-1]
    # logits at the last prompt position predict the first answer token (the space).
    start = len(prompt_ids) - 1
    assert batch.labels[0, start].item() == answer_ids[0]
    assert tok.convert_ids_to_tokens(answer_ids[0]) == "Ġ"
    assert batch.labels[0, :start].eq(IGNORE_INDEX).all()
    assert _decode_labels(tok, batch.labels[0]) == " Paris"
    assert batch.attention_mask.all()


def test_labels_match_next_token_of_full_sequence(tok):
    batch = encode_qa(tok, ["Q: a", "Longer prompt here"], ["xyz", "no"])
    full = [
        tok(p)["input_ids"] + tok(" " + a, add_special_tokens=False)["input_ids"]
        for p, a in [("Q: a", "xyz"), ("Longer prompt here", "no")]
    ]
    for b, ids in enumerate(full):
        mask = answer_positions(batch.labels[b])
        positions = mask.nonzero().flatten()
        # labels[i] == full[i + 1]: the shift is already applied.
        assert batch.labels[b, positions].tolist() == [ids[i + 1] for i in positions.tolist()]


def test_right_padding_and_lengths(tok):
    batch = encode_qa(tok, ["a", "a much longer prompt"], ["bb", "c"])
    lengths = batch.attention_mask.sum(1).tolist()
    assert lengths == [1 + 1 + 2, 1 + 20 + 1]  # BOS + prompt + answer[:-1] (answer incl. space)
    assert batch.input_ids.shape == (2, max(lengths))
    assert batch.input_ids[0, lengths[0] :].eq(tok.pad_token_id).all()
    assert batch.attention_mask[0, lengths[0] :].eq(0).all()
    assert batch.labels[0, lengths[0] :].eq(IGNORE_INDEX).all()
    assert batch.input_ids.dtype == batch.labels.dtype == batch.attention_mask.dtype == torch.long
    assert [_decode_labels(tok, row) for row in batch.labels] == [" bb", " c"]


def test_max_length_cuts_prompt_from_the_left_keeping_bos(tok):
    batch = encode_qa(tok, ["abcdefghij"], ["xy"], max_length=6)
    ids = batch.input_ids[0].tolist()
    assert len(ids) == 6
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == "hij x"
    assert _decode_labels(tok, batch.labels[0]) == " xy"
    with pytest.raises(ValueError, match="does not fit"):
        encode_qa(tok, ["abc"], ["a long answer"], max_length=4)


def test_old_labels_are_aligned_with_new_answer(tok):
    batch, old = encode_qa_pair(tok, ["p1", "p2"], ["Rome", "Oslo"], ["Paris", "Bo"])
    for b in range(2):
        new_pos = answer_positions(batch.labels[b]).nonzero().flatten().tolist()
        old_pos = answer_positions(old[b]).nonzero().flatten().tolist()
        assert old_pos == new_pos[: len(old_pos)]
    # " Paris" (6 tokens) is cut to the 5 positions of " Rome"; " Bo" (3) covers 3 of 5.
    assert tok.decode(old[0][old[0] != IGNORE_INDEX].tolist()) == " Pari"
    assert tok.decode(old[1][old[1] != IGNORE_INDEX].tolist()) == " Bo"


def test_encode_role_returns_old_labels_only_for_counterfact(tok):
    zsre = EditRecord(
        "z0", "France", "capital", "zsre", QA("q?", "Paris"), QA("r?", "Paris"), QA("u?", "x")
    )
    cf = EditRecord(
        "c0",
        "France",
        "capital",
        "counterfact",
        QA("q", "Rome", "Paris"),
        QA("r", "Rome", "Paris"),
        QA("u", "Oslo", "Rome"),
    )
    _, old = encode_role(tok, [zsre], "edit")
    assert old is None
    batch, old = encode_role(tok, [cf], "unrel")
    assert _decode_labels(tok, batch.labels[0]) == " Oslo"
    assert tok.decode(old[0][old[0] != IGNORE_INDEX].tolist()) == " Rome"[: len(" Oslo")]
    with pytest.raises(ValueError, match="some records"):
        encode_role(tok, [zsre, cf], "edit")


def test_real_bpe_tokenizer_with_merges_and_eos_padding():
    tok = _bpe_tokenizer(with_pad=False)
    assert tok.pad_token_id is None
    answer_ids = tok(" Paris", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(answer_ids) == ["ĠParis"]  # space merged into the word
    batch = encode_qa(
        tok, ["The capital of France is", "The capital of Italy is x y"], ["Paris", "Rome"]
    )
    # No BOS in this tokenizer: the prompt is exactly its own tokens; input ends at the prompt.
    prompt_ids = tok("The capital of France is")["input_ids"]
    n = len(prompt_ids)
    assert batch.input_ids[0, :n].tolist() == prompt_ids
    assert batch.labels[0, n - 1].item() == answer_ids[0]
    # Right padding with EOS even though the tokenizer itself pads on the left.
    assert batch.attention_mask[0, -1].item() == 0
    assert batch.input_ids[0, -1].item() == tok.eos_token_id
    assert [_decode_labels(tok, row) for row in batch.labels] == [" Paris", " Rome"]
