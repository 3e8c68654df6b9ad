"""Remove CoT tokens from a collated batch and re-pack it. Pure tensor code.

A batch row holds one example, or several packed examples whose ``position_ids``
restart at 0. ``cot_mask`` marks the CoT tokens each strategy recorded. For every
example, ``scheduled + offset`` CoT tokens are dropped from the left (or right) of
its CoT, clipped to the CoT length; everything else (question, both separators,
answer) stays. Rows are then compacted, trailing padding trimmed, and attention
mask and position ids rebuilt per packed segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import sample_offsets

SIDES = ("left", "right")


@dataclass
class RemovalResult:
    """The re-packed batch and what was removed, per example (packed segment)."""

    batch: dict[str, torch.Tensor]
    removed_per_example: torch.Tensor  # (E,) long
    cot_left_per_example: torch.Tensor  # (E,) long

    @property
    def all_cot_removed(self) -> bool:
        """Whether no example kept any CoT token (waits for the device)."""
        return bool(self.all_cot_removed_flag())

    def all_cot_removed_flag(self) -> torch.Tensor:
        """0-d bool tensor on the batch's device: no example kept any CoT token."""
        return (self.cot_left_per_example == 0).all()

    def stat_tensors(self) -> dict[str, torch.Tensor]:
        """``removed_tokens_mean`` and ``no_cot_fraction`` as 0-d float tensors, no host sync.

        With no example in the batch: 0 removed and a no-CoT fraction of 1.
        """
        removed = self.removed_per_example.float()
        no_cot = (self.cot_left_per_example == 0).float()
        if removed.numel() == 0:
            return {"removed_tokens_mean": removed.new_zeros(()), "no_cot_fraction": removed.new_ones(())}
        return {"removed_tokens_mean": removed.mean(), "no_cot_fraction": no_cot.mean()}

    def stats(self) -> dict[str, float]:
        """:meth:`stat_tensors` as Python floats."""
        return {name: value.item() for name, value in self.stat_tensors().items()}


def segment_starts(shape: torch.Size, position_ids: torch.Tensor | None, device) -> torch.Tensor:
    """(B, T) bool: where a packed segment (or a row) begins.

    Packing restarts ``position_ids`` at 0 in each segment, which is also what
    flash-attention's varlen path derives its boundaries from; so a segment starts
    at column 0 and wherever the position id does not increase.
    """
    starts = torch.zeros(shape, dtype=torch.bool, device=device)
    starts[:, 0] = True
    if position_ids is not None:
        starts[:, 1:] = position_ids[:, 1:] <= position_ids[:, :-1]
    return starts


def remove_cot(
    batch: dict[str, torch.Tensor],
    cot_mask: torch.Tensor,
    scheduled: int,
    side: str = "left",
    *,
    smoothing_probs: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    keep_position: bool = False,
    pad_token_id: int = 0,
    padding_side: str = "right",
) -> RemovalResult:
    """Drop ``scheduled + offset`` CoT tokens per example and re-pack ``batch``.

    ``batch`` holds ``input_ids`` and ``labels`` (B, T), optionally
    ``attention_mask`` (0 = padding; packed segment ids are kept as they are) and
    ``position_ids``. ``smoothing_probs`` (see ``schedule.smoothing_distribution``)
    draws one offset per example with ``generator``; ``None`` means no smoothing.
    With ``keep_position`` the kept tokens keep their original position ids
    (created as ``arange`` when the batch had none); otherwise positions restart
    at 0 per segment. Other keys of ``batch`` are returned untouched when they do
    not have the (B, T) shape, and compacted like ``input_ids`` when they do.
    """
    if side not in SIDES:
        raise ValueError(f"`side` must be one of {SIDES}, got {side!r}")
    input_ids = batch["input_ids"]
    device = input_ids.device
    rows, width = input_ids.shape
    attention_mask = batch.get("attention_mask")
    position_ids = batch.get("position_ids")
    real = attention_mask != 0 if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)

    starts = segment_starts(input_ids.shape, position_ids, device)
    flat_starts = starts.flatten()
    segment = flat_starts.long().cumsum(0) - 1  # (B*T,) global example index
    num_segments = int(segment[-1].item()) + 1
    first_index = flat_starts.nonzero().squeeze(1)  # (E,)

    cot = (cot_mask.flatten() != 0) & real.flatten()
    cot_long = cot.long()
    cot_len = torch.zeros(num_segments, dtype=torch.long, device=device).scatter_add_(0, segment, cot_long)
    running = cot_long.cumsum(0)
    before_segment = running[first_index] - cot_long[first_index]
    rank = running - 1 - before_segment[segment]  # rank of a CoT token inside its example

    to_remove = torch.full((num_segments,), int(scheduled), dtype=torch.long, device=device)
    if smoothing_probs is not None:
        to_remove = to_remove + sample_offsets(num_segments, smoothing_probs.to(device), generator)
    to_remove = torch.minimum(to_remove, cot_len)
    if side == "left":
        removed = cot & (rank < to_remove[segment])
    else:
        removed = cot & (rank >= (cot_len - to_remove)[segment])

    keep = (real.flatten() & ~removed).view(rows, width)
    new_lengths = keep.sum(1)
    new_width = int(new_lengths.max().item()) if rows else 0
    target = keep.long().cumsum(1) - 1  # column in the compacted row
    if padding_side == "left":
        target = target + (new_width - new_lengths).unsqueeze(1)
    row_index = torch.arange(rows, device=device).unsqueeze(1).expand(rows, width)
    src_rows, dst_cols = row_index[keep], target[keep]

    def compact(values: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.full((rows, new_width), fill, dtype=values.dtype, device=device)
        out[src_rows, dst_cols] = values[keep]
        return out

    pad_positions = torch.arange(new_width, device=device).unsqueeze(0) - (
        new_lengths.unsqueeze(1) if padding_side == "right" else 0
    )
    pad_positions = pad_positions.clamp(min=0)
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        if key in ("input_ids", "labels", "attention_mask", "position_ids"):
            continue
        out[key] = compact(value, 0) if value.shape == input_ids.shape else value
    out["input_ids"] = compact(input_ids, pad_token_id)
    out["labels"] = compact(batch["labels"], -100)
    if attention_mask is not None:
        out["attention_mask"] = compact(attention_mask, 0)

    if keep_position:
        original = position_ids if position_ids is not None else torch.arange(width, device=device).expand(rows, width)
        positions = compact(original, 0)
    elif position_ids is not None:
        positions = compact(torch.zeros_like(position_ids), 0)
        new_segment = compact(segment.view(rows, width), -1).flatten()
        column = torch.arange(new_width, device=device).repeat(rows)
        valid = new_segment >= 0
        segment_first_column = torch.full((num_segments,), new_width, dtype=torch.long, device=device)
        segment_first_column.scatter_reduce_(0, new_segment[valid], column[valid], reduce="amin")
        rebuilt = torch.zeros(rows * new_width, dtype=positions.dtype, device=device)
        rebuilt[valid] = (column[valid] - segment_first_column[new_segment[valid]]).to(positions.dtype)
        positions = rebuilt.view(rows, new_width)
    else:
        positions = None
    if positions is not None:
        padding = ~compact(torch.ones_like(input_ids, dtype=torch.bool), False)
        out["position_ids"] = torch.where(padding, pad_positions.to(positions.dtype), positions)

    examples = real.flatten()
    if attention_mask is None:
        # Packed rows without a mask (axolotl drops it for sdpa/eager packing): the padding
        # tail is a segment of its own, with no trained label and no CoT; not an example.
        examples = examples & ((batch["labels"].flatten() != -100) | cot)
    real_segments = torch.zeros(num_segments, dtype=torch.long, device=device).scatter_add_(
        0, segment, examples.long()
    ) > 0
    removed_count = to_remove[real_segments]
    return RemovalResult(
        batch=out,
        removed_per_example=removed_count,
        cot_left_per_example=(cot_len - to_remove)[real_segments],
    )
