"""Teacher-forced metrics on hand-made cases: ZsRE token accuracy, CounterFact logit and probability rules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from hiedit.data import QA, EditRecord
from hiedit.data.tokenize import IGNORE_INDEX
from hiedit.evaluation.metrics import (
    answer_position_stats,
    metric_columns,
    score_records,
    summarize,
)
from hiedit.models.tiny import build_byte_tokenizer

X = IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


class BigramLM(torch.nn.Module):
    """A fake causal LM whose logits at position i are ``table[input_ids[i]]``: outputs set by hand."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size), requires_grad=False)
        self.calls = 0

    def set(self, tok, previous: str, following: str, value: float) -> None:
        self.table.data[_id(tok, previous), _id(tok, following)] = value

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        self.calls += 1
        return SimpleNamespace(logits=self.table[input_ids])


def _id(tok, char: str) -> int:
    (token,) = tok(char, add_special_tokens=False)["input_ids"]
    return token


def _zsre(i: int, prompt: str, target: str, loc: str = "q", loc_ans: str = "r") -> EditRecord:
    return EditRecord(
        f"z{i}", "s", "P1", "zsre", QA(prompt, target), QA(prompt, target), QA(loc, loc_ans)
    )


def _cf(i: int, prompt: str, new: str, true: str) -> EditRecord:
    return EditRecord(
        f"c{i}",
        "s",
        "P1",
        "counterfact",
        QA(prompt, new, true),
        QA(prompt, new, true),
        QA(prompt, true, new),
    )


def test_position_stats_by_hand():
    logits = torch.tensor(
        [
            [[0.0, 0, 0], [1, 3, 2], [5, 0, 1], [0, 0, 0]],
            [[0.0, 0, 0], [0, 0, 0], [0, 1, 4], [0, 0, 0]],
        ]
    )
    labels = torch.tensor([[X, 1, 2, X], [X, X, 1, X]])
    old = torch.tensor([[X, 2, X, X], [X, X, 2, X]])
    stats = answer_position_stats(logits, labels, old)
    assert stats.n_answer.tolist() == [2, 1]
    # row 0: argmax 1 (correct), argmax 0 vs label 2 (wrong); row 1: argmax 2 vs label 1 (wrong).
    assert stats.n_correct.tolist() == [1, 0]
    assert stats.predictions == [[1, 0], [2]]
    expected = [
        logits[0, 1].log_softmax(-1)[1] + logits[0, 2].log_softmax(-1)[2],
        logits[1, 2].log_softmax(-1)[1],
    ]
    assert stats.log_prob.tolist() == pytest.approx([float(v) for v in expected], abs=1e-6)
    # old tokens only at the first answer position of each row: 3 > 2 yes, 1 > 4 no.
    assert stats.n_aligned.tolist() == [1, 1]
    assert stats.n_preferred.tolist() == [1, 0]
    expected_old = [logits[0, 1].log_softmax(-1)[2], logits[1, 2].log_softmax(-1)[2]]
    assert stats.old_log_prob.tolist() == pytest.approx([float(v) for v in expected_old], abs=1e-6)


def test_logit_rule_is_strict_and_uses_aligned_positions_only():
    logits = torch.tensor([[[0.0, 2, 2, 9], [0, 0, 0, 0], [9, 0, 0, 0]]])
    labels = torch.tensor([[1, 3, 0]])  # a three-token new answer
    old = torch.tensor([[2, X, X]])  # a one-token old answer: one aligned position
    stats = answer_position_stats(logits, labels, old)
    # logit(new)=2 equals logit(old)=2: a tie is a failure.
    assert stats.n_aligned.tolist() == [1]
    assert stats.n_preferred.tolist() == [0]
    identical = answer_position_stats(logits, labels, torch.tensor([[1, X, X]]))
    assert identical.n_preferred.tolist() == [0]


def test_zsre_token_accuracy(tok):
    lm = BigramLM(len(tok))
    # answer " cd" after prompt "ab": positions predict " " (after b), "c" (after " "), "d" (after c)
    lm.set(tok, "b", " ", 5.0)
    lm.set(tok, " ", "c", 5.0)
    lm.set(tok, "c", "e", 5.0)  # wrong: predicts e instead of d
    # unrel "q" -> " r": only " " predicted (after q); "r" after " " is wrong (c wins)
    lm.set(tok, "q", " ", 5.0)
    records = [_zsre(0, "ab", "cd"), _zsre(1, "ab", "c")]
    scores = score_records(lm, tok, records, batch_size=4)
    assert list(scores.frame.columns) == metric_columns("zsre", agreement=False)
    assert scores.frame["efficacy"].tolist() == pytest.approx([2 / 3, 1.0])
    assert scores.frame["generalization"].tolist() == pytest.approx([2 / 3, 1.0])
    assert scores.frame["specificity"].tolist() == pytest.approx([0.5, 0.5])
    assert summarize(scores.frame)["efficacy"] == pytest.approx(5 / 6)
    assert scores.predictions[0] == [_id(tok, " "), _id(tok, "c")]
    assert scores.n_forwards == math.ceil(6 / 4)


def test_specificity_agreement_against_reference(tok):
    lm = BigramLM(len(tok))
    lm.set(tok, "q", " ", 5.0)
    records = [_zsre(0, "ab", "cd", loc="q", loc_ans="rs")]
    unedited = score_records(lm, tok, records, batch_size=8)
    same = score_records(lm, tok, records, batch_size=8, reference=unedited.predictions)
    assert same.frame["specificity_agreement"].tolist() == [1.0]
    changed = [list(unedited.predictions[0])]
    changed[0][1] = _id(tok, "z")
    partly = score_records(lm, tok, records, batch_size=8, reference=changed)
    assert partly.frame["specificity_agreement"].tolist() == pytest.approx([2 / 3])
    with pytest.raises(ValueError, match="reference predictions"):
        score_records(lm, tok, records, batch_size=8, reference=[[1]])


def test_counterfact_logit_and_probability_rules(tok):
    lm = BigramLM(len(tok))
    # new " ab" vs true " c": aligned positions " "/" " (tie: fails) and "a"/"c" after " ".
    lm.set(tok, " ", "a", 2.0)
    lm.set(tok, " ", "c", 1.0)
    lm.set(tok, "a", "b", 20.0)  # P(b | a) ~ 1, so P(" ab") > P(" c")
    records = [_cf(0, "x", "ab", "c")]
    scores = score_records(lm, tok, records, batch_size=3)
    frame = scores.frame
    assert list(frame.columns) == metric_columns("counterfact", agreement=False)
    assert frame["efficacy"].tolist() == [0.5]
    assert frame["efficacy_prob"].tolist() == [1.0]
    # unrel swaps the roles: true " c" against new " ab"; "c" loses to "a" and the tie fails.
    assert frame["specificity"].tolist() == [0.0]
    assert frame["specificity_prob"].tolist() == [0.0]
    # six teacher-forced tuples (three roles, new and old pass each) in batches of 3.
    assert scores.n_forwards == 2

    lm.set(tok, "a", "b", 0.0)  # now P(" ab") = P(a|' ') P(b|a) < P(c|' ')? check by hand
    p_space = lm.table[_id(tok, "x")].log_softmax(-1)[_id(tok, " ")]
    row = lm.table[_id(tok, " ")].log_softmax(-1)
    new = p_space + row[_id(tok, "a")] + lm.table[_id(tok, "a")].log_softmax(-1)[_id(tok, "b")]
    old = p_space + row[_id(tok, "c")]
    assert bool(new > old) is False
    again = score_records(lm, tok, records, batch_size=3).frame
    assert again["efficacy_prob"].tolist() == [0.0]
    assert again["efficacy"].tolist() == [0.5]  # the per-position rule is unchanged


@pytest.fixture(scope="module")
def tiny(tok):
    from hiedit.models.tiny import build_tiny_llama

    return build_tiny_llama(
        {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 128,
        },
        len(tok),
        0,
    )


class FullLogits(torch.nn.Module):
    """Wraps a model behind a forward without ``logits_to_keep``: the LM head sees every position."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_forward_count_is_linear_and_batches_do_not_change_results(tok, tiny):
    model = tiny
    records = [
        _cf(i, f"The {i}th city lies in", "Ruritania" if i % 2 else "Oz", "Freedonia"[: 3 + i])
        for i in range(7)
    ]
    one = score_records(model, tok, records, batch_size=1)
    many = score_records(model, tok, records, batch_size=5)
    assert one.n_forwards == 6 * 7
    assert many.n_forwards == math.ceil(6 * 7 / 5)
    assert one.predictions == many.predictions
    assert one.frame.equals(many.frame)


def test_mixed_formats_are_refused(tok):
    lm = BigramLM(len(tok))
    with pytest.raises(ValueError, match="mix formats"):
        score_records(lm, tok, [_zsre(0, "a", "b"), _cf(1, "a", "b", "c")], batch_size=2)


def test_lm_head_on_the_answer_span_only_changes_nothing(tok, tiny):
    records = [
        _zsre(i, f"Where is town {i}? In", "Utopia"[: 2 + i], "nq question: x" * i, "yz")
        for i in range(4)
    ]
    sliced = score_records(tiny, tok, records, batch_size=3)
    full = score_records(FullLogits(tiny), tok, records, batch_size=3)
    assert sliced.predictions == full.predictions
    assert sliced.frame.equals(full.frame)


def test_old_pass_is_shared_only_where_the_contexts_are_identical(tok, tiny):
    # A separate old pass is needed unless old[:-1] is a prefix of the target's tokens.
    # edit/equiv (old = true answer vs target " Oz"): " q" and " Oa" share, " Ozzy" (longer) and
    # " Xz" (diverges before its last token) do not. unrel (old = " Oz" vs the true answer):
    # " Oa" and " Ozzy" share, " q" (shorter) and " Xz" do not. Two own passes per role.
    records = [
        _cf(0, "Ann lives in", "Oz", "q"),
        _cf(1, "Bob lives in", "Oz", "Oa"),
        _cf(2, "Cid lives in", "Oz", "Ozzy"),
        _cf(3, "Dee lives in", "Oz", "Xz"),
    ]
    shared = score_records(tiny, tok, records, batch_size=1)
    separate = score_records(tiny, tok, records, batch_size=1, share_prefix=False)
    assert separate.n_forwards == 6 * 4
    # edit/equiv (old = true answer): records 0 and 1 shared; unrel (old = " Oz"): old[:-1] = " O"
    # is a prefix of " q"? no; of " Oa" yes; of " Ozzy" yes; of " Xz" no.
    assert shared.n_forwards == 3 * 4 + 2 * 2 + 2
    assert shared.frame.equals(separate.frame)


def test_agreement_on_correct_positions_and_coarse_kl_against_the_unedited_model(tok):
    lm = BigramLM(len(tok))
    # unrel " rs" after "q": the unedited model gets " " and "r" right, not "s".
    lm.set(tok, "q", " ", 5.0)
    lm.set(tok, " ", "r", 5.0)
    records = [_zsre(0, "ab", "cd", loc="q", loc_ans="rs")]
    unedited = score_records(lm, tok, records, batch_size=8)
    assert unedited.reference.correct == [[True, True, False]]
    same = score_records(lm, tok, records, batch_size=8, reference=unedited.reference).frame
    assert same["specificity_agreement"].tolist() == [1.0]
    assert same["specificity_agreement_correct"].tolist() == [1.0]
    assert same["specificity_kl"].tolist() == [0.0]  # exactly: nothing changed

    lm.set(tok, " ", "z", 9.0)  # an edit flips the second (correct) position
    moved = score_records(lm, tok, records, batch_size=8, reference=unedited.reference).frame
    assert moved["specificity_agreement"].tolist() == pytest.approx([2 / 3])
    assert moved["specificity_agreement_correct"].tolist() == pytest.approx([1 / 2])
    assert moved["specificity_kl"].iloc[0] > 0.1


def test_coarse_kl_is_the_full_kl_with_every_token_and_a_lower_bound_with_fewer():
    from hiedit.evaluation.metrics import coarse_kl

    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 50, generator=g).log_softmax(-1)
    q = (p + 0.5 * torch.randn(3, 50, generator=g)).log_softmax(-1)
    full = float((p.exp() * (p - q)).sum(-1).mean())
    assert coarse_kl(p, q) == pytest.approx(full, rel=1e-5)
    top = p.topk(5, dim=-1)
    partial = coarse_kl(top.values, q.gather(1, top.indices))
    assert 0 < partial <= full


def test_counterfact_per_token_probability_rule(tok):
    lm = BigramLM(len(tok))
    # new " ab" (3 tokens) against true " c" (2 tokens): the summed rule prefers the shorter
    # answer, the per-token one compares mean log-probabilities.
    lm.set(tok, "x", " ", 10.0)
    lm.set(tok, " ", "a", 3.0)
    lm.set(tok, " ", "c", 3.0)
    lm.set(tok, "a", "b", 8.0)
    frame = score_records(lm, tok, [_cf(0, "x", "ab", "c")], batch_size=4).frame
    logp = {
        (prev, nxt): float(lm.table[_id(tok, prev)].log_softmax(-1)[_id(tok, nxt)])
        for prev, nxt in (("x", " "), (" ", "a"), (" ", "c"), ("a", "b"))
    }
    new = [logp["x", " "], logp[" ", "a"], logp["a", "b"]]
    old = [logp["x", " "], logp[" ", "c"]]
    assert frame["efficacy_prob"].tolist() == [float(sum(new) > sum(old))]
    assert frame["efficacy_prob_per_token"].tolist() == [
        float(sum(new) / len(new) > sum(old) / len(old))
    ]
    assert frame["efficacy_prob"].iloc[0] != frame["efficacy_prob_per_token"].iloc[0]
