"""Stepwise Internalization: how many CoT tokens are removed when.

Pure integer/tensor maths following the official trainer (Deng et al., arXiv
2405.14838). Indices are 0-based micro-batch indices counted across epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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


# ---- paces in optimizer steps ------------------------------------------------------------------------
def start_optimizer_step(
    gradient_accumulation_steps: int, micro_batches_per_epoch: int, start_epoch: int = 0, start_step: int | None = None
) -> int:
    """First optimizer step of the removal phase of a pace counted in optimizer steps.

    ``start_step`` when given, else the first step of epoch ``start_epoch + 1``
    (``start_epoch`` x optimizer steps per epoch, the same boundary as the Δ schedule's
    full-CoT epochs).
    """
    if start_step is not None:
        return start_step
    steps_per_epoch = max(1, -(-micro_batches_per_epoch // gradient_accumulation_steps))
    return start_epoch * steps_per_epoch


def step_pace_count(
    optimizer_step: int, steps_per_token: int, start_step: int = 0, remove_all_at: int | None = None
) -> int:
    """Fixed pace in optimizer steps: one more token every ``steps_per_token`` steps after ``start_step``.

    The count in force at ``optimizer_step`` is ``max(0, step - start_step) // steps_per_token``;
    as in the Δ schedule the first token goes one full interval after the start, and once the
    count reaches ``remove_all_at`` it is :data:`REMOVE_ALL` for good.
    """
    if steps_per_token < 1:
        raise ValueError(f"steps_per_token must be at least 1, got {steps_per_token}")
    count = max(0, optimizer_step - start_step) // steps_per_token
    if remove_all_at is not None and count >= remove_all_at:
        return REMOVE_ALL
    return count


def gated_count_bounds(
    optimizer_step: int, min_steps: int, max_steps: int, start_step: int = 0, remove_all_at: int | None = None
) -> tuple[int, int]:
    """(fewest, most) tokens a loss-gated pace can have removed at ``optimizer_step``.

    Token ``k`` goes at the earliest ``start_step + k x min_steps`` and at the latest
    ``start_step + k x max_steps``: each gap between two removals is at least ``min_steps``
    and at most ``max_steps`` optimizer steps.
    """
    return (
        step_pace_count(optimizer_step, max_steps, start_step, remove_all_at),
        step_pace_count(optimizer_step, min_steps, start_step, remove_all_at),
    )


# ---- the loss gate ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossGateState:
    """Where a loss-gated pace stands; everything a checkpoint needs to resume exactly.

    ``count``: tokens removed by the gate (before ``remove_all_at``). ``changed_at``: the
    optimizer step the count last grew (the start step before the first token).
    ``ema``/``ema_weight``: the training loss averaged over the current stage only, restarted
    at each removal and bias-corrected (``ema / ema_weight``), so the level of one stage never
    leaks into the next. ``before``: the stage average just before the last removal (None
    before the first). ``peak``: the highest stage average since the last removal.
    """

    count: int = 0
    changed_at: int = 0
    ema: float = 0.0
    ema_weight: float = 0.0
    before: float | None = None
    peak: float | None = None

    @property
    def level(self) -> float | None:
        """The bias-corrected stage average of the training loss (None before any step)."""
        return self.ema / self.ema_weight if self.ema_weight > 0 else None

    def threshold(self, recovery: float) -> float | None:
        """The level the stage average must reach: ``before + (1 - recovery) x (peak - before)``."""
        if self.before is None or self.peak is None:
            return None
        return self.before + (1.0 - recovery) * max(0.0, self.peak - self.before)


def gate_observe(state: LossGateState, loss: float, ema_beta: float) -> LossGateState:
    """Fold one optimizer step's training loss (the same value on every rank) into the stage average.

    Non-finite losses are skipped. The average is ``Σ β^i loss`` / ``Σ β^i`` over the stage's
    steps (an EMA with Adam's bias correction), so its first value is the first loss after a
    removal: the shock itself, not a lagging mix with the previous stage.
    """
    if not math.isfinite(loss):
        return state
    ema = ema_beta * state.ema + (1.0 - ema_beta) * loss
    weight = ema_beta * state.ema_weight + (1.0 - ema_beta)
    level = ema / weight
    peak = level if state.peak is None else max(state.peak, level)
    return replace(state, ema=ema, ema_weight=weight, peak=peak if state.before is not None else None)


def gate_opens(state: LossGateState, optimizer_step: int, min_steps: int, max_steps: int, recovery: float) -> bool:
    """Whether the next token goes at ``optimizer_step`` (Stepwise Internalization's adaptive pace).

    Never before ``min_steps`` since the last change; always at ``max_steps``. In between the gate
    opens once the stage average has recovered ``recovery`` of the jump the last removal caused:
    ``level <= before + (1 - recovery) x (peak - before)``. The first token (no removal to recover
    from yet) goes at ``min_steps``.

    Why this criterion: an absolute threshold stalls because the loss floor rises as the CoT goes
    (later stages cannot reach the early floor); a threshold relative to the previous stage's level
    (``level <= R x before``) opens without any learning whenever the shock is smaller than
    ``(R - 1) x before``, so the floor may rise by a factor R per token and the pace runs away.
    A fraction of the jump asks for evidence that the model absorbed this removal, on the scale of
    this removal: a small shock (an easy token) clears fast, a large one (the last tokens) waits,
    and the level may rise by at most ``(1 - recovery) x jump`` per token, not by a factor. Its
    limit: a token whose new floor sits more than ``(1 - recovery) x jump`` above the old level
    cannot meet it and waits for ``max_steps``, which bounds the stall.
    """
    since = optimizer_step - state.changed_at
    if since < min_steps:
        return False
    if since >= max_steps:
        return True
    threshold = state.threshold(recovery)
    if threshold is None:  # nothing removed yet: the first token goes at min_steps
        return True
    level = state.level
    return level is not None and level <= threshold


def gate_advance(state: LossGateState, optimizer_step: int) -> LossGateState:
    """Remove one more token at ``optimizer_step``: the stage average restarts, ``before`` records its last level."""
    return LossGateState(count=state.count + 1, changed_at=optimizer_step, before=state.level)
