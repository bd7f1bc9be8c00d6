"""Teacher-forced tokenisation of (prompt, answer) pairs, shared by training and every metric.

The rule (docs/method.md §1.2), written once:

* the answer is prefixed with one space (``" " + answer``) unless it already starts with
  whitespace, in which case it is used as is (a second space would become its own token);
* the prompt is tokenised *with* the tokenizer's special tokens (BOS for Llama-style tokenizers),
  the answer *without*;
* ``input_ids = prompt_ids + answer_ids[:-1]`` (the last answer token is never an input);
* ``labels`` are already shifted: ``labels[b, i]`` is the token that ``logits[b, i]`` must
  predict, so consumers compare ``logits[b, i]`` with ``labels[b, i]`` directly and never pass
  ``labels=`` to a Hugging Face model (which would shift a second time). Every other position,
  padding included, is ``IGNORE_INDEX`` (−100);
* rows are right-padded with the tokenizer's pad token (its EOS token if it has no pad token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from hiedit.data.records import EditRecord

IGNORE_INDEX = -100


@dataclass
class Batch:
    """Right-padded teacher-forcing batch; ``labels`` are aligned with the logits (pre-shifted)."""

    input_ids: torch.Tensor  # long, B × T
    attention_mask: torch.Tensor  # long, B × T
    labels: torch.Tensor  # long, B × T, IGNORE_INDEX outside answer positions

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )

    def rows(self, index: Sequence[int]) -> Batch:
        """The sub-batch of rows ``index`` (in that order), trimmed to its longest row."""
        import torch

        picked = torch.as_tensor(list(index), dtype=torch.long, device=self.input_ids.device)
        width = int(self.attention_mask[picked].sum(1).max()) if len(picked) else 0
        return Batch(
            self.input_ids[picked, :width],
            self.attention_mask[picked, :width],
            self.labels[picked, :width],
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a causal LM forward (deliberately without ``labels``)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def answer_text(answer: str) -> str:
    """The answer as it is tokenised: one leading space, not doubled if already present."""
    return answer if answer[:1].isspace() else " " + answer


def pad_token_id(tokenizer) -> int:
    """The id used for padding: the pad token, else EOS."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("tokenizer has neither a pad token nor an EOS token to pad with")


def _token_ids(tokenizer, texts: Sequence[str], *, special: bool) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]]


def _fit(
    prompt: list[int], answer: list[int], max_length: int | None, bos: int | None
) -> list[int]:
    """Drop prompt tokens from the left (after a leading BOS) so prompt + answer[:-1] fits."""
    if max_length is None or len(prompt) + len(answer) - 1 <= max_length:
        return prompt
    keep_head = 1 if prompt and bos is not None and prompt[0] == bos else 0
    room = max_length - (len(answer) - 1) - keep_head
    if room < 1:
        raise ValueError(
            f"answer of {len(answer)} tokens does not fit in max_length={max_length} with a prompt"
        )
    return prompt[:keep_head] + prompt[len(prompt) - room :]


def _tokenise_pairs(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    prompt_ids = _token_ids(tokenizer, prompts, special=True)
    answer_ids = _token_ids(tokenizer, [answer_text(a) for a in answers], special=False)
    for i, ids in enumerate(answer_ids):
        if not ids:
            raise ValueError(f"answer {i} ({answers[i]!r}) tokenises to nothing")
    prompt_ids = [
        _fit(p, a, max_length, tokenizer.bos_token_id)
        for p, a in zip(prompt_ids, answer_ids, strict=True)
    ]
    return prompt_ids, answer_ids


def encode_qa(
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    max_length: int | None = None,
) -> Batch:
    """Teacher-forcing batch for ``prompts[b]`` followed by ``answers[b]`` (rules: module docstring).

    With ``max_length``, prompts too long are cut from the left (a leading BOS is kept) so the
    whole answer always fits.
    """
    import torch

    prompt_ids, answer_ids = _tokenise_pairs(tokenizer, prompts, answers, max_length)
    width = max(
        (len(p) + len(a) - 1 for p, a in zip(prompt_ids, answer_ids, strict=True)), default=0
    )
    batch_size = len(prompt_ids)
    input_ids = torch.full((batch_size, width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
    for b, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids, strict=True)):
        row = prompt + answer[:-1]
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, : len(row)] = 1
        # The logit at the prompt's last position predicts the first answer token.
        start = len(prompt) - 1
        labels[b, start : start + len(answer)] = torch.tensor(answer, dtype=torch.long)
    return Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def encode_qa_pair(
    tokenizer,
    prompts: Sequence[str],
    new_answers: Sequence[str],
    old_answers: Sequence[str],
    *,
    max_length: int | None = None,
) -> tuple[Batch, torch.Tensor]:
    """Teacher-forcing batch for the new answers, plus the old answers' tokens at aligned positions.

    Alignment rule (the CounterFact logit comparison): the j-th token of the old answer sits at
    the position of the j-th token of the new answer, i.e. where ``labels`` holds new token j.
    Only the first ``min(len(new), len(old))`` answer positions are compared; ``old_labels`` is
    ``IGNORE_INDEX`` everywhere else (old tokens beyond the new answer's length are dropped, new
    positions beyond the old answer's length are not compared). The context is always the new
    answer (teacher forcing on ``labels``), as in the reference.
    """
    batch = encode_qa(tokenizer, prompts, new_answers, max_length=max_length)
    if len(old_answers) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(old_answers)} old answers")
    old_ids = _token_ids(tokenizer, [answer_text(a) for a in old_answers], special=False)
    old_labels = batch.labels.new_full(batch.labels.shape, IGNORE_INDEX)
    for b, old in enumerate(old_ids):
        positions = answer_positions(batch.labels[b]).nonzero().flatten()[: len(old)]
        old_labels[b, positions] = batch.labels.new_tensor(old[: len(positions)])
    return batch, old_labels


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the positions whose logits predict an answer token."""
    return labels != IGNORE_INDEX


def encode_role(
    tokenizer, records: Sequence[EditRecord], role: str, *, max_length: int | None = None
) -> tuple[Batch, torch.Tensor | None]:
    """Encode one role ("edit", "equiv", "unrel") of ``records``.

    Returns the batch and, when every tuple has an ``old`` answer (CounterFact), the aligned old
    labels from ``encode_qa_pair``; otherwise ``None``.
    """
    qas = [rec.role(role) for rec in records]
    prompts = [qa.prompt for qa in qas]
    targets = [qa.target for qa in qas]
    olds = [qa.old for qa in qas]
    if qas and all(old is not None for old in olds):
        return encode_qa_pair(tokenizer, prompts, targets, olds, max_length=max_length)
    if any(old is not None for old in olds):
        raise ValueError(f"role {role!r}: some records have an old answer and some do not")
    return encode_qa(tokenizer, prompts, targets, max_length=max_length), None


def check_token_lengths(
    tokenizer,
    records: Sequence[EditRecord],
    max_tokens: int | None,
    *,
    source: str,
    chunk: int = 1024,
) -> None:
    """Raise ``DataError`` naming ``source`` and the first record one of whose tuples, encoded as
    ``encode_qa`` does (prompt + answer minus its last token), needs more than ``max_tokens``
    positions; ``None`` checks nothing. Run before any editing, so that an over-long record stops
    the job at once instead of deep in a stream (or, unbounded, exhausting memory)."""
    from hiedit.data.records import ROLES
    from hiedit.errors import DataError

    if max_tokens is None:
        return
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        for role in ROLES:
            qas = [rec.role(role) for rec in part]
            prompt_ids = _token_ids(tokenizer, [qa.prompt for qa in qas], special=True)
            answer_ids = _token_ids(
                tokenizer, [answer_text(qa.target) for qa in qas], special=False
            )
            for offset, (p, a) in enumerate(zip(prompt_ids, answer_ids, strict=True)):
                length = len(p) + len(a) - 1
                if length > max_tokens:
                    raise DataError(
                        f"{source}: record {start + offset} ({part[offset].record_id}): its "
                        f"{role} tuple is {length} tokens (prompt {len(p)}, answer {len(a)}), "
                        f"more than the model's {max_tokens} positions"
                    )


def check_fits_model(tokenizer, records: Sequence[EditRecord], model, source: str) -> None:
    """``check_token_lengths`` against the model's context (``config.max_position_embeddings``;
    models that do not state one are not checked)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    check_token_lengths(tokenizer, records, int(limit) if limit else None, source=source)
