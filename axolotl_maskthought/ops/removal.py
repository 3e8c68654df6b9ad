"""Remove CoT tokens from a collated batch and re-pack it. Pure tensor code.

A batch row holds one example, or several packed examples whose ``position_ids``
restart at 0. ``cot_mask`` marks the CoT tokens each strategy recorded. For every
example, ``scheduled + offset`` CoT tokens are dropped from the left (or right) of
its CoT, clipped to the CoT length; everything else (question, both separators,
answer) stays. Rows are then compacted, trailing padding trimmed, and attention
mask and position ids rebuilt per packed segment.

``cot_mask`` codes (per token):

- ``0``: not CoT, always kept;
- positive (``1``, :data:`COT`, as strategies write it): a CoT token, removed by the schedule;
- negative: a chat template's layout inside the think block (e.g. the newlines around the
  reasoning). Kept while the example keeps any CoT token; once its whole CoT is removed,
  ``-1`` (:data:`LAYOUT_DROP`) is dropped and ``-(t + 2)`` (:func:`layout_code`) becomes token
  ``t`` (its label too, where trained), so the block reads exactly as the template renders
  an empty reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from axolotl_maskthought.ops.schedule import sample_offsets

SIDES = ("left", "right")
COT = 1
LAYOUT_DROP = -1


def layout_code(token_id: int) -> int:
    """The ``cot_mask`` code of a layout token that becomes ``token_id`` once the whole CoT is removed."""
    return -(int(token_id) + 2)


def cot_flags(cot_mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor of ``cot_mask``'s shape: the CoT tokens (positive codes), layout codes excluded."""
    return cot_mask > 0


@dataclass
class RemovalResult:
    """The re-packed batch and what was removed, per example (packed segment).

    ``removed_per_segment`` and ``cot_left_per_segment`` are (S,) long tensors over
    the batch's segments; ``is_example`` (S,) bool marks those that are examples
    (not the padding tail of a packed row). The ``*_per_example`` properties select
    the examples, which waits for the device; :meth:`stat_tensors` and
    :meth:`all_cot_removed_flag` do not.
    """

    batch: dict[str, torch.Tensor]
    removed_per_segment: torch.Tensor
    cot_left_per_segment: torch.Tensor
    is_example: torch.Tensor
    cot_mask: torch.Tensor | None = None  # (B, T') the codes after removal (substituted layout: 0)

    @property
    def removed_per_example(self) -> torch.Tensor:
        """(E,) long: CoT tokens removed from each example."""
        return self.removed_per_segment[self.is_example]

    @property
    def cot_left_per_example(self) -> torch.Tensor:
        """(E,) long: CoT tokens each example kept."""
        return self.cot_left_per_segment[self.is_example]

    @property
    def all_cot_removed(self) -> bool:
        """Whether no example kept any CoT token (waits for the device)."""
        return bool(self.all_cot_removed_flag())

    def all_cot_removed_flag(self) -> torch.Tensor:
        """0-d bool tensor on the batch's device: no example kept any CoT token."""
        return ((self.cot_left_per_segment == 0) | ~self.is_example).all()

    def stat_tensors(self) -> dict[str, torch.Tensor]:
        """``removed_tokens_mean`` and ``no_cot_fraction`` over the examples, as 0-d float
        tensors computed without a host sync. With no example: 0 removed, fraction 1."""
        weight = self.is_example.float()
        examples = weight.sum()
        empty = examples == 0
        removed = (self.removed_per_segment.float() * weight).sum() / examples.clamp(min=1)
        no_cot = ((self.cot_left_per_segment == 0).float() * weight).sum() / examples.clamp(min=1)
        return {"removed_tokens_mean": removed, "no_cot_fraction": torch.where(empty, torch.ones_like(no_cot), no_cot)}

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

    ``cot_mask`` (B, T) holds the codes of the module docstring: positive on CoT tokens;
    layout codes are dropped or substituted once an example's whole CoT is removed.
    ``batch`` holds ``input_ids`` and ``labels`` (B, T), optionally
    ``attention_mask`` (0 = padding; packed segment ids are kept as they are) and
    ``position_ids``. ``smoothing_probs`` (see ``schedule.smoothing_distribution``)
    draws one offset per example with ``generator``; ``None`` means no smoothing.
    With ``keep_position`` the tokens after a removed run keep their original position
    ids (created as ``arange`` when the batch had none) and the kept token just before
    the run takes the place of the run's last token, as the official trainer shifts
    positions from ``removal_from - 1`` on; otherwise positions restart at 0 per segment. Other keys of ``batch`` are returned untouched when they do
    not have the (B, T) shape, and compacted like ``input_ids`` when they do.
    """
    if side not in SIDES:
        raise ValueError(f"`side` must be one of {SIDES}, got {side!r}")
    # Two host syncs, both needed: the number of examples (one smoothing offset is drawn
    # per example, in batch order) and the width of the re-packed rows.
    input_ids = batch["input_ids"]
    device = input_ids.device
    rows, width = input_ids.shape
    attention_mask = batch.get("attention_mask")
    position_ids = batch.get("position_ids")
    real = attention_mask != 0 if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)

    starts = segment_starts(input_ids.shape, position_ids, device)
    segment = starts.flatten().long().cumsum(0) - 1  # (B*T,) global example index
    num_segments = int(segment[-1].item()) + 1

    codes = cot_mask.flatten()
    cot = (codes > 0) & real.flatten()
    cot_long = cot.long()
    cot_len = torch.zeros(num_segments, dtype=torch.long, device=device).scatter_add_(0, segment, cot_long)
    running = cot_long.cumsum(0)
    # CoT tokens before each segment: the running count just before its first token,
    # which is the smallest `running - cot_long` inside the segment (running only grows).
    before_segment = torch.full((num_segments,), running.numel(), dtype=torch.long, device=device).scatter_reduce_(
        0, segment, running - cot_long, reduce="amin"
    )
    rank = running - 1 - before_segment[segment]  # rank of a CoT token inside its example

    to_remove = torch.full((num_segments,), int(scheduled), dtype=torch.long, device=device)
    if smoothing_probs is not None:
        to_remove = to_remove + sample_offsets(num_segments, smoothing_probs.to(device), generator)
    to_remove = torch.minimum(to_remove, cot_len)
    if side == "left":
        removed = cot & (rank < to_remove[segment])
    else:
        removed = cot & (rank >= (cot_len - to_remove)[segment])

    # Layout of the think block, once an example's whole CoT is gone: dropped, or
    # substituted with the template's empty-reasoning tokens.
    whole = ((to_remove == cot_len) & (cot_len > 0))[segment] & real.flatten()
    dropped_layout = whole & (codes == LAYOUT_DROP)
    substitute = (whole & (codes < LAYOUT_DROP)).view(rows, width)
    substitute_ids = (-cot_mask.long() - 2).clamp(min=0).to(input_ids.dtype)
    input_ids = torch.where(substitute, substitute_ids, input_ids)
    labels = batch["labels"]
    labels = torch.where(substitute & (labels != -100), substitute_ids.to(labels.dtype), labels)
    new_codes = torch.where(substitute, torch.zeros_like(cot_mask), cot_mask)

    keep = (real.flatten() & ~removed & ~dropped_layout).view(rows, width)
    new_lengths = keep.sum(1)
    new_width = int(new_lengths.max().item()) if rows else 0
    target = keep.long().cumsum(1) - 1  # column in the compacted row
    if padding_side == "left":
        target = target + (new_width - new_lengths).unsqueeze(1)
    target = torch.where(keep, target, new_width)  # dropped tokens land in a spare column

    def compact(values: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.full((rows, new_width + 1), fill, dtype=values.dtype, device=device)
        return out.scatter_(1, target, values)[:, :new_width]

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
    out["labels"] = compact(labels, -100)
    if attention_mask is not None:
        out["attention_mask"] = compact(attention_mask, 0)

    if keep_position:
        original = position_ids if position_ids is not None else torch.arange(width, device=device).expand(rows, width)
        positions = compact(original, 0)
        # Official keep_position (train.py: ``position_ids[b, removal_from - 1:] += removed``): the tokens
        # after a removed run keep their original positions and the kept token just before the run
        # (the first separator, for left removal) moves up by the run's length, onto the last removed
        # token's place. Its position then tells the model how many CoT tokens are gone.
        kept_real = compact(torch.ones_like(input_ids, dtype=torch.bool), False)
        columns = compact(torch.arange(width, device=device).expand(rows, width), 0)
        same_segment = compact(segment.view(rows, width), -1)
        gap = columns[:, 1:] - columns[:, :-1] - 1  # (B, T'-1) tokens dropped between two neighbours
        neighbours = kept_real[:, 1:] & kept_real[:, :-1] & (same_segment[:, 1:] == same_segment[:, :-1])
        shift = torch.where(neighbours, gap, torch.zeros_like(gap))
        positions = positions.clone()
        positions[:, :-1] += shift.to(positions.dtype)
    elif position_ids is not None:
        new_segment = compact(segment.view(rows, width), -1).flatten()
        column = torch.arange(new_width, device=device).repeat(rows)
        valid = new_segment >= 0
        # First column of each segment in the compacted rows (padding goes to a spare slot).
        segment_first_column = torch.full((num_segments + 1,), new_width, dtype=torch.long, device=device)
        segment_first_column.scatter_reduce_(0, torch.where(valid, new_segment, num_segments), column, reduce="amin")
        rebuilt = torch.where(valid, column - segment_first_column[new_segment.clamp(min=0)], 0)
        positions = rebuilt.to(position_ids.dtype).view(rows, new_width)
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
    is_example = (
        torch.zeros(num_segments, dtype=torch.long, device=device).scatter_add_(0, segment, examples.long()) > 0
    )
    return RemovalResult(
        batch=out,
        removed_per_segment=to_remove,
        cot_left_per_segment=cot_len - to_remove,
        is_example=is_example,
        cot_mask=compact(new_codes, 0),
    )
