"""Stepwise Internalization: how many CoT tokens are removed when.

Pure integer/tensor maths following the official trainer (Deng et al., arXiv
2405.14838). Indices are 0-based micro-batch indices counted across epochs.
"""

from __future__ import annotations

import math

import torch

REMOVE_ALL = 2**62
"""Scheduled count meaning "remove the whole CoT" (larger than any sequence)."""

SMOOTHING_SUPPORT = 100
"""Offsets are drawn from {0, ..., 99}; the tail mass beyond sits on 99."""


def steps_per_removed_token(micro_batches_per_epoch: int, tokens_per_epoch: float) -> int:
    """``round(micro_batches_per_epoch / Δ)``: micro-batches between two increments."""
    return int(round(micro_batches_per_epoch / tokens_per_epoch))


def scheduled_count(
    micro_batch_index: int,
    micro_batches_per_epoch: int,
    tokens_per_epoch: float,
    start_epoch: int = 0,
    remove_all_at: int | None = None,
) -> int:
    """CoT tokens scheduled for removal when training on micro-batch ``micro_batch_index``.

    Official semantics: the count grows by one every ``steps_per_removed_token``
    micro-batches once ``start_epoch`` full-CoT epochs are over, carried across
    epochs. When ``steps_per_removed_token`` rounds to 0 (Δ larger than the epoch)
    the official loop increments on every micro-batch from the very first, start
    epochs included; that quirk is kept. Once the count reaches ``remove_all_at``
    it becomes :data:`REMOVE_ALL` for good.
    """
    interval = steps_per_removed_token(micro_batches_per_epoch, tokens_per_epoch)
    if interval == 0:
        count = micro_batch_index + 1
    else:
        start = start_epoch * micro_batches_per_epoch
        count = max(0, micro_batch_index - start) // interval
    if remove_all_at is not None and count >= remove_all_at:
        return REMOVE_ALL
    return count


def in_full_cot_epochs(micro_batch_index: int, micro_batches_per_epoch: int, start_epoch: int) -> bool:
    """True while the run is in its ``start_epoch`` full-CoT epochs (no removal, no smoothing)."""
    return micro_batch_index < start_epoch * micro_batches_per_epoch


def smoothing_distribution(smoothing_lambda: float, support: int = SMOOTHING_SUPPORT) -> torch.Tensor:
    """P(o) = (1 - e^-λ) e^-λo for o < support-1, the leftover mass on the last offset."""
    offsets = torch.arange(support, dtype=torch.float64)
    probs = (1 - math.exp(-smoothing_lambda)) * torch.exp(-smoothing_lambda * offsets)
    probs[-1] += 1 - probs.sum()
    return probs


def sample_offsets(count: int, probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` independent smoothing offsets (long tensor on ``probs.device``)."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=probs.device)
    return torch.multinomial(probs, count, replacement=True, generator=generator)


def should_reset_optimizer(previous_count: int, current_count: int, all_removed_before: bool) -> bool:
    """Official rule: reset when the count grew, unless the whole CoT was already gone."""
    return current_count > previous_count and not all_removed_before


def first_micro_batch(optimizer_step: int, gradient_accumulation_steps: int, micro_batches_per_epoch: int) -> int:
    """Index of the first micro-batch of an optimizer step, counted across epochs.

    An epoch of B micro-batches has ceil(B / accumulation) optimizer steps, the last
    one possibly shorter, as in the HF Trainer loop.
    """
    steps_per_epoch = max(1, -(-micro_batches_per_epoch // gradient_accumulation_steps))
    epoch, step_in_epoch = divmod(optimizer_step, steps_per_epoch)
    return epoch * micro_batches_per_epoch + step_in_epoch * gradient_accumulation_steps


def optimizer_step_count(
    optimizer_step: int,
    gradient_accumulation_steps: int,
    micro_batches_per_epoch: int,
    tokens_per_epoch: float,
    start_epoch: int = 0,
    remove_all_at: int | None = None,
) -> int:
    """The count in force for a whole optimizer step.

    With gradient accumulation a new count only takes effect at an optimizer-step
    boundary: every micro-batch of a step uses the count of its first micro-batch.
    With accumulation 1 this is exactly the official per-micro-batch schedule.
    """
    return scheduled_count(
        first_micro_batch(optimizer_step, gradient_accumulation_steps, micro_batches_per_epoch),
        micro_batches_per_epoch,
        tokens_per_epoch,
        start_epoch,
        remove_all_at,
    )


def show_count(count: int | None) -> str:
    """A removal count as printed: ``"all"`` for :data:`REMOVE_ALL`, ``"-"`` for None (off)."""
    if count is None:
        return "-"
    return "all" if count == REMOVE_ALL else str(count)


def logged_count(count: int) -> int:
    """A removal count as a logged number: -1 stands for :data:`REMOVE_ALL` (the whole CoT)."""
    return -1 if count == REMOVE_ALL else count
