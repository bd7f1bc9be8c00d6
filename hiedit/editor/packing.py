"""Sequence packing: the rows of a padded batch laid end to end, so no compute goes to padding.

A training step scores the equiv and unrel tuples of the last ``back_depth`` edits in one padded
batch; on the embedded data about a quarter of its positions are padding, and on a CPU a forward
costs in proportion to the positions it runs. Packing places the sequences one after another in a
few rows of at most ``capacity`` positions (first-fit by decreasing length, so that no row is
much longer than needed) and restarts the position ids at 0 for each sequence.

With ``position_ids`` and no attention mask, the decoders of transformers 5 (Llama, Gemma-2)
detect packed sequences from the restarts and attend only within each one (a block-diagonal
causal mask; Gemma-2's sliding window is applied inside each sequence too). Each sequence then
computes what it would alone, up to floating-point rounding; the tests check this for every
supported model type. Positions left over at the end of a row form their own dummy sequence,
whose outputs are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hiedit.data.tokenize import IGNORE_INDEX, Batch

# Decoders whose mask creation handles packed sequences (see the module docstring).
PACKING_MODEL_TYPES = ("llama", "gemma2")


def supports_packing(model) -> bool:
    """Whether ``model``'s decoder attends within packed sequences only."""
    return getattr(getattr(model, "config", None), "model_type", None) in PACKING_MODEL_TYPES


@dataclass
class Packing:
    """Where each position of a padded ``Batch`` (B × T) goes in the packed rows (P × C).

    ``flat_index[b, i]`` is the position of token ``(b, i)`` in the flattened packed rows, or
    −1 for padding; ``row_of_position`` (P × C) is the padded row each packed position came from
    (−1 for the filler at the end of a row).
    """

    input_ids: torch.Tensor  # P × C
    position_ids: torch.Tensor  # P × C
    flat_index: torch.Tensor  # B × T
    row_of_position: torch.Tensor  # P × C

    @classmethod
    def of(cls, batch: Batch, capacity: int) -> Packing:
        """Pack ``batch``'s rows into rows of ``max(capacity, longest row)`` positions."""
        lengths = batch.attention_mask.sum(1).tolist()
        width = max([capacity, *lengths])
        bins: list[list[int]] = []  # row indices per packed row
        fill: list[int] = []
        for row in sorted(range(len(lengths)), key=lambda r: (-lengths[r], r)):
            for b, used in enumerate(fill):
                if used + lengths[row] <= width:
                    bins[b].append(row)
                    fill[b] += lengths[row]
                    break
            else:
                bins.append([row])
                fill.append(lengths[row])
        width = max(fill) if fill else 0
        device = batch.input_ids.device
        input_ids = torch.zeros(len(bins), width, dtype=batch.input_ids.dtype, device=device)
        position_ids = torch.zeros(len(bins), width, dtype=torch.long, device=device)
        row_of_position = torch.full((len(bins), width), -1, dtype=torch.long, device=device)
        flat_index = torch.full(batch.input_ids.shape, -1, dtype=torch.long, device=device)
        for b, rows in enumerate(bins):
            start = 0
            for row in rows:
                n = lengths[row]
                input_ids[b, start : start + n] = batch.input_ids[row, :n]
                position_ids[b, start : start + n] = torch.arange(n, device=device)
                row_of_position[b, start : start + n] = row
                flat_index[row, :n] = b * width + start + torch.arange(n, device=device)
                start += n
            if start < width:  # the filler: a dummy sequence of its own
                input_ids[b, start:] = batch.input_ids[rows[0], 0]
                position_ids[b, start:] = torch.arange(width - start, device=device)
        return cls(input_ids, position_ids, flat_index, row_of_position)

    def per_position(self, per_row: torch.Tensor) -> torch.Tensor:
        """A per-row value (B,) of the padded batch spread over the packed positions (P × C)."""
        filler = per_row.new_zeros(1)
        return torch.cat([per_row, filler])[self.row_of_position]

    def scatter(self, hidden: torch.Tensor) -> torch.Tensor:
        """Padded per-token states (B × T × H) laid out as packed rows (P × C × H)."""
        valid = self.flat_index >= 0
        out = hidden.new_zeros(self.input_ids.numel(), hidden.shape[-1])
        out[self.flat_index[valid]] = hidden[valid]
        return out.view(*self.input_ids.shape, hidden.shape[-1])

    def answers(self, packed_hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The packed states at ``batch``'s answer positions, in the padded batch's row-major order."""
        index = self.flat_index[batch.labels != IGNORE_INDEX]
        return packed_hidden.reshape(-1, packed_hidden.shape[-1])[index]
