"""``axolotl-maskthought schedule CONFIG.yml``: what a config will do, step by step.

No model is loaded: the run's length is derived from the config and the
number of training rows, then the trainer's own functions give, per optimizer
step, the Masked Thought rate (``masking.mask_rate``) and the CoT tokens
scheduled for removal (``schedule.optimizer_step_count``). Printed as a table,
optionally plotted. With ``cot_removal``, the training files are tokenized with
the config's tokenizer and the dataset strategies, and the CoT lengths are set
against the count at the last step (:mod:`axolotl_maskthought.engine.cot_lengths`): a
schedule that ends with CoT left is reported with settings that fix it.

How the run's length is derived (axolotl 0.19 / transformers, no packing):
rows minus the ``val_set_size`` split; micro-batches per epoch and rank =
rows / ``micro_batch_size`` (floor with ``dataloader_drop_last``, else ceil),
split over ``WORLD_SIZE`` ranks as accelerate shards them; optimizer steps =
``max_steps`` if set, else ceil(rows x ``num_epochs`` / (micro_batch_size x
gradient_accumulation_steps x world size)), axolotl's own formula.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from axolotl_maskthought.adapters.axolotl.args import validate_blocks
from axolotl_maskthought.adapters.axolotl.dataset_lengths import dataset_rows


@dataclass
class RunShape:
    """How long the run is, as the trainer will see it."""

    train_rows: int
    micro_batches_per_epoch: int  # per rank: len(train dataloader)
    gradient_accumulation_steps: int
    optimizer_steps_per_epoch: int
    max_steps: int
    world_size: int
    notes: list[str] = field(default_factory=list)


@dataclass
class ScheduleRow:
    step: int  # 0-based optimizer step (trainer.state.global_step while it runs)
    epoch: int  # 1-based
    first_micro_batch: int  # index across epochs, as the removal schedule counts
    mask_rate: float | None  # None without masked_thought
    removal_count: int | None  # scheduled CoT tokens removed; schedule.REMOVE_ALL = whole CoT; None = off
    # loss_gate: the most tokens removed by then (each token at min_steps); removal_count is the fewest
    removal_count_most: int | None = None


@dataclass
class SchedulePlan:
    shape: RunShape
    rows: list[ScheduleRow]
    masked_thought: object | None
    cot_removal: object | None

    def change_steps(self) -> list[int]:
        """Steps where the removal count changes or the mask rate first reaches its ratio."""
        changes = []
        ratio = self.masked_thought.ratio if self.masked_thought is not None else None
        for previous, row in zip(self.rows, self.rows[1:]):
            count_changed = (row.removal_count, row.removal_count_most) != (
                previous.removal_count,
                previous.removal_count_most,
            )
            rate_full = ratio is not None and row.mask_rate >= ratio > previous.mask_rate
            if count_changed or rate_full:
                changes.append(row.step)
        return changes


# ---- config --------------------------------------------------------------------------------


def _positive_int(config: dict, key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise ValueError(f"`{key}` is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or int(value) != value:
        raise ValueError(f"`{key}` must be a positive integer, got {value!r}")
    return int(value)


# ---- the run's shape ----------------------------------------------------------------------------
def run_shape(
    config: dict,
    dataset_size: int | None = None,
    world_size: int | None = None,
    micro_batches_per_epoch: int | None = None,
) -> RunShape:
    notes = []
    rows = dataset_size if dataset_size is not None else dataset_rows(config)
    if rows < 1:
        raise ValueError("the training data has no rows")
    micro_batch_size = _positive_int(config, "micro_batch_size")
    if config.get("gradient_accumulation_steps") is None and config.get("batch_size"):
        accumulation = max(1, int(config["batch_size"]) // micro_batch_size)
    else:
        accumulation = _positive_int(config, "gradient_accumulation_steps", 1)
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be at least 1, got {world}")

    val_set_size = float(config.get("val_set_size") or 0)
    if val_set_size and not config.get("test_datasets"):
        held_out = int(val_set_size) if val_set_size > 1 else math.ceil(val_set_size * rows)
        if held_out >= rows:
            raise ValueError(f"`val_set_size` {config['val_set_size']} leaves no training rows out of {rows}")
        rows -= held_out
        notes.append(f"val_set_size {config['val_set_size']}: {held_out} rows held out for evaluation")

    packing = bool(config.get("sample_packing"))
    drop_last = config.get("dataloader_drop_last")
    if drop_last is None:  # axolotl's builder default
        drop_last = packing and config.get("eval_sample_packing") is False
    if micro_batches_per_epoch is not None:
        batches = micro_batches_per_epoch
        notes.append(f"micro-batches per epoch given: {batches}")
    else:
        total_batches = rows // micro_batch_size if drop_last else -(-rows // micro_batch_size)
        if total_batches % world == 0 or drop_last:
            batches = total_batches // world
        else:  # accelerate's even batches: every rank gets the longer share
            batches = total_batches // world + 1
        if packing:
            notes.append(
                "ESTIMATE: sample_packing puts several rows in each micro-batch, so the real run has "
                "fewer micro-batches per epoch (and steps) than shown; pass --micro-batches-per-epoch "
                "with the trainer's len(train_dataloader) for exact numbers"
            )
    if batches < 1:
        raise ValueError(f"{rows} training rows make no full micro-batch of {micro_batch_size}")
    steps_per_epoch = max(1, -(-batches // accumulation))

    if config.get("max_steps"):
        max_steps = _positive_int(config, "max_steps")
    elif packing or micro_batches_per_epoch is not None:
        max_steps = math.ceil(steps_per_epoch * float(config.get("num_epochs") or 1))
    else:  # axolotl's calculate_total_num_steps without packing
        global_batch = micro_batch_size * accumulation * world
        max_steps = math.ceil(rows * float(config.get("num_epochs") or 1) / global_batch)
    return RunShape(rows, batches, accumulation, steps_per_epoch, max_steps, world, notes)


# ---- the schedule ---------------------------------------------------------------------------------
def plan_schedule(
    config: dict,
    dataset_size: int | None = None,
    world_size: int | None = None,
    micro_batches_per_epoch: int | None = None,
) -> SchedulePlan:
    """Mask rate and removal count of every optimizer step, from the trainer's functions."""
    from axolotl_maskthought.ops.masking import mask_rate
    from axolotl_maskthought.ops.schedule import first_micro_batch

    masked, removal = validate_blocks(config)
    shape = run_shape(config, dataset_size, world_size, micro_batches_per_epoch)
    rows = []
    for step in range(shape.max_steps):
        fewest, most = removal_counts(removal, shape, step) if removal is not None else (None, None)
        row = ScheduleRow(
            step=step,
            epoch=step // shape.optimizer_steps_per_epoch + 1,
            first_micro_batch=first_micro_batch(step, shape.gradient_accumulation_steps, shape.micro_batches_per_epoch),
            mask_rate=(mask_rate(step, shape.max_steps, masked.ratio, masked.warmup) if masked is not None else None),
            removal_count=fewest,
            removal_count_most=most,
        )
        rows.append(row)
    return SchedulePlan(shape, rows, masked, removal)


def removal_start(removal, shape: RunShape) -> int:
    """First optimizer step of the removal phase of a pace in optimizer steps."""
    from axolotl_maskthought.ops.schedule import start_optimizer_step

    return start_optimizer_step(
        shape.gradient_accumulation_steps, shape.micro_batches_per_epoch, removal.start_epoch, removal.start_step
    )


def removal_counts(removal, shape: RunShape, step: int) -> tuple[int, int | None]:
    """(count, None) for a fixed pace, as the trainer computes it; for ``loss_gate`` the
    (fewest, most) tokens it can have removed by ``step``."""
    from axolotl_maskthought.ops.schedule import gated_count_bounds, optimizer_step_count, step_pace_count

    if removal.pace == "loss_gate":
        gate = removal.loss_gate
        return gated_count_bounds(
            step, gate.min_steps, gate.max_steps, removal_start(removal, shape), removal.remove_all_at
        )
    if removal.pace == "steps_per_token":
        return step_pace_count(
            step, removal.steps_per_token, removal_start(removal, shape), removal.remove_all_at
        ), None
    count = optimizer_step_count(
        step,
        shape.gradient_accumulation_steps,
        shape.micro_batches_per_epoch,
        removal.tokens_per_epoch,
        removal.start_epoch,
        removal.remove_all_at,
    )
    return count, None


def cot_report(
    plan: SchedulePlan,
    config: dict,
    lengths: list[int],
    dataset_size: int | None = None,
    micro_batches_per_epoch: int | None = None,
):
    """:func:`~axolotl_maskthought.engine.cot_lengths.cot_left_report` for the planned run."""
    from axolotl_maskthought.engine.cot_lengths import cot_left_report

    shape = plan.shape

    def steps_for_epochs(epochs: int) -> int:
        return run_shape(
            {**config, "num_epochs": epochs, "max_steps": None}, dataset_size, shape.world_size, micro_batches_per_epoch
        ).max_steps

    uses_max_steps = bool(config.get("max_steps"))
    return cot_left_report(
        lengths,
        plan.cot_removal,
        shape.max_steps,
        shape.gradient_accumulation_steps,
        shape.micro_batches_per_epoch,
        length_setting="max_steps" if uses_max_steps else "num_epochs",
        num_epochs=None if uses_max_steps else float(config.get("num_epochs") or 1),
        steps_for_epochs=steps_for_epochs,
    )


# ---- output ------------------------------------------------------------------------------------------
