"""``axolotl-maskthought schedule CONFIG.yml``: what a config will do, step by step.

No model, no tokenizer: the run's length is derived from the config and the
number of training rows, then the trainer's own functions give, per optimizer
step, the Masked Thought rate (``masking.mask_rate``) and the CoT tokens
scheduled for removal (``schedule.optimizer_step_count``). Printed as a table,
optionally plotted.

How the run's length is derived (axolotl 0.19 / transformers, no packing):
rows minus the ``val_set_size`` split; micro-batches per epoch and rank =
rows / ``micro_batch_size`` (floor with ``dataloader_drop_last``, else ceil),
split over ``WORLD_SIZE`` ranks as accelerate shards them; optimizer steps =
``max_steps`` if set, else ceil(rows x ``num_epochs`` / (micro_batch_size x
gradient_accumulation_steps x world size)), axolotl's own formula.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

FULL_TABLE_STEPS = 60  # longer runs print a sample of steps plus every change
SAMPLED_ROWS = 30
ALL = "all"


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
            count_changed = row.removal_count != previous.removal_count
            rate_full = ratio is not None and row.mask_rate >= ratio > previous.mask_rate
            if count_changed or rate_full:
                changes.append(row.step)
        return changes


# ---- config --------------------------------------------------------------------------------
def _error(message: str) -> Exception:
    from .cli import CommandError

    return CommandError(message)


def load_config(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    with open(path, encoding="utf-8") as handle:
        try:
            config = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise _error(f"{path}: not valid YAML ({err})") from None
    if not isinstance(config, dict):
        raise _error(f"{path}: expected a mapping of config keys")
    return config


def validate_blocks(config: dict):
    """The plugin's blocks, validated as axolotl would (errors name the field)."""
    from pydantic import ValidationError

    from .args import MaskThoughtArgs

    try:
        args = MaskThoughtArgs.model_validate(config)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            where = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            got = f" (got {item['input']!r})" if where and not isinstance(item.get("input"), dict) else ""
            problems.append(f"`{where}`: {message}{got}" if where else message)
        raise _error("; ".join(problems)) from None
    if args.masked_thought is None and args.cot_removal is None:
        raise _error("the config has neither a `masked_thought:` nor a `cot_removal:` block: nothing is scheduled")
    return args.masked_thought, args.cot_removal


def _positive_int(config: dict, key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise _error(f"`{key}` is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or int(value) != value:
        raise _error(f"`{key}` must be a positive integer, got {value!r}")
    return int(value)


# ---- dataset size ------------------------------------------------------------------------------
def count_rows(path: Path) -> int:
    """Rows of a local file: a .json array's items, else non-blank lines (.jsonl, JSON lines, .txt)."""
    with open(path, encoding="utf-8") as handle:
        if path.suffix == ".json" and handle.read(1024).lstrip().startswith("["):
            import json

            handle.seek(0)
            return len(json.load(handle))
        handle.seek(0)
        return sum(1 for line in handle if line.strip())


def dataset_rows(config: dict) -> int:
    """Rows of every `datasets:` entry that is a local file; anything else needs --dataset-size."""
    entries = config.get("datasets") or []
    if not entries:
        raise _error("the config has no `datasets:`; pass --dataset-size")
    total = 0
    for index, entry in enumerate(entries):
        files = entry.get("data_files") if isinstance(entry, dict) else None
        if isinstance(files, (list, tuple)):
            paths = list(files)
        else:
            paths = [files or (entry.get("path") if isinstance(entry, dict) else None)]
        for name in paths:
            path = Path(str(name)) if name else None
            if path is None or not path.is_file():
                raise _error(
                    f"`datasets[{index}]` ({name!r}) is not a local file whose rows can be counted; "
                    "pass --dataset-size N"
                )
            if path.suffix not in (".jsonl", ".json", ".txt"):
                raise _error(f"`datasets[{index}]`: cannot count rows of {path.suffix or 'this'} files; pass --dataset-size N")
            total += count_rows(path)
    return total


# ---- the run's shape ----------------------------------------------------------------------------
def run_shape(config: dict, dataset_size: int | None = None, world_size: int | None = None,
              micro_batches_per_epoch: int | None = None) -> RunShape:
    notes = []
    rows = dataset_size if dataset_size is not None else dataset_rows(config)
    if rows < 1:
        raise _error("the training data has no rows")
    micro_batch_size = _positive_int(config, "micro_batch_size")
    if config.get("gradient_accumulation_steps") is None and config.get("batch_size"):
        accumulation = max(1, int(config["batch_size"]) // micro_batch_size)
    else:
        accumulation = _positive_int(config, "gradient_accumulation_steps", 1)
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        raise _error(f"WORLD_SIZE must be at least 1, got {world}")

    val_set_size = float(config.get("val_set_size") or 0)
    if val_set_size and not config.get("test_datasets"):
        held_out = int(val_set_size) if val_set_size > 1 else math.ceil(val_set_size * rows)
        if held_out >= rows:
            raise _error(f"`val_set_size` {config['val_set_size']} leaves no training rows out of {rows}")
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
        raise _error(f"{rows} training rows make no full micro-batch of {micro_batch_size}")
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
def plan_schedule(config: dict, dataset_size: int | None = None, world_size: int | None = None,
                  micro_batches_per_epoch: int | None = None) -> SchedulePlan:
    """Mask rate and removal count of every optimizer step, from the trainer's functions."""
    from .ops.masking import mask_rate
    from .ops.schedule import first_micro_batch, optimizer_step_count

    masked, removal = validate_blocks(config)
    shape = run_shape(config, dataset_size, world_size, micro_batches_per_epoch)
    rows = []
    for step in range(shape.max_steps):
        row = ScheduleRow(
            step=step,
            epoch=step // shape.optimizer_steps_per_epoch + 1,
            first_micro_batch=first_micro_batch(step, shape.gradient_accumulation_steps, shape.micro_batches_per_epoch),
            mask_rate=(mask_rate(step, shape.max_steps, masked.ratio, masked.warmup) if masked is not None else None),
            removal_count=(
                optimizer_step_count(step, shape.gradient_accumulation_steps, shape.micro_batches_per_epoch,
                                     removal.tokens_per_epoch, removal.start_epoch, removal.remove_all_at)
                if removal is not None else None
            ),
        )
        rows.append(row)
    return SchedulePlan(shape, rows, masked, removal)


# ---- output ------------------------------------------------------------------------------------------
def show_count(count: int | None) -> str:
    from .ops.schedule import REMOVE_ALL

    if count is None:
        return "-"
    return ALL if count == REMOVE_ALL else str(count)


def _notes_for(plan: SchedulePlan, previous: ScheduleRow | None, row: ScheduleRow) -> str:
    from .ops.schedule import REMOVE_ALL

    notes = []
    if previous is not None and row.removal_count != previous.removal_count:
        if row.removal_count == REMOVE_ALL:
            notes.append("whole CoT removed from here on")
        else:
            notes.append(f"removal {show_count(previous.removal_count)} -> {show_count(row.removal_count)}")
        if plan.cot_removal.reset_optimizer and previous.removal_count != REMOVE_ALL:
            notes.append("optimizer reset")
    ratio = plan.masked_thought.ratio if plan.masked_thought is not None else None
    if ratio is not None and previous is not None and row.mask_rate >= ratio > previous.mask_rate:
        notes.append("mask rate at its ratio")
    return ", ".join(notes)


def table_rows(plan: SchedulePlan) -> list[ScheduleRow]:
    """Every step of a short run; for long runs a regular sample plus every change point."""
    if len(plan.rows) <= FULL_TABLE_STEPS:
        return list(plan.rows)
    every = math.ceil(len(plan.rows) / SAMPLED_ROWS)
    keep = {row.step for row in plan.rows if row.step % every == 0}
    keep.update(plan.change_steps())
    keep.add(plan.rows[-1].step)
    return [row for row in plan.rows if row.step in keep]


def format_table(plan: SchedulePlan) -> str:
    header = ("step", "epoch", "micro-batch", "mask rate", "CoT removed", "")
    lines = [header]
    by_step = {row.step: row for row in plan.rows}
    for row in table_rows(plan):
        rate = "-" if row.mask_rate is None else f"{row.mask_rate:.4f}"
        lines.append((str(row.step), str(row.epoch), str(row.first_micro_batch), rate,
                      show_count(row.removal_count), _notes_for(plan, by_step.get(row.step - 1), row)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(width) if i < 5 else cell for i, (cell, width) in enumerate(zip(line, widths))).rstrip()
            for line in lines]
    return "\n".join(text)


def describe(plan: SchedulePlan, config_path: str | None = None) -> str:
    from .ops.schedule import SMOOTHING_SUPPORT, smoothing_distribution, steps_per_removed_token

    shape = plan.shape
    lines = []
    if config_path:
        lines.append(f"config: {config_path}")
    lines.append(
        f"training rows: {shape.train_rows}; micro-batches per epoch (per rank): {shape.micro_batches_per_epoch}; "
        f"gradient accumulation: {shape.gradient_accumulation_steps}; optimizer steps per epoch: "
        f"{shape.optimizer_steps_per_epoch}; world size: {shape.world_size}; optimizer steps: {shape.max_steps}"
    )
    lines += [f"note: {note}" for note in shape.notes]
    masked = plan.masked_thought
    if masked is not None:
        full = next((row.step for row in plan.rows if row.mask_rate >= masked.ratio), None)
        lines.append(
            f"masked_thought: ratio {masked.ratio}, warmup {masked.warmup}, replacement {masked.replacement}, "
            f"scope {masked.scope}; rate = ratio x step / (warmup x {shape.max_steps} + 1), capped"
            + (f"; full rate from step {full}" if full is not None else "; never reaches the full rate")
        )
    removal = plan.cot_removal
    if removal is not None:
        interval = steps_per_removed_token(shape.micro_batches_per_epoch, removal.tokens_per_epoch)
        text = (f"cot_removal: {removal.tokens_per_epoch} tokens per epoch -> one more every {interval} "
                f"micro-batches (round({shape.micro_batches_per_epoch} / {removal.tokens_per_epoch}))"
                if interval else
                f"cot_removal: {removal.tokens_per_epoch} tokens per epoch exceeds the "
                f"{shape.micro_batches_per_epoch} micro-batches per epoch: one more every micro-batch")
        text += f", side {removal.side}, from epoch {removal.start_epoch + 1}"
        if removal.remove_all_at is not None:
            text += f", whole CoT once {removal.remove_all_at} are scheduled"
        text += ("; optimizer reset at each increase (unless the whole CoT was already gone)"
                 if removal.reset_optimizer else "; no optimizer reset")
        lines.append(text)
        if removal.start_epoch:
            lines.append(f"  epochs 1-{removal.start_epoch} train on the full CoT: nothing removed, no smoothing")
        if removal.smoothing_lambda is not None:
            probs = smoothing_distribution(removal.smoothing_lambda)
            mean = sum(offset * float(p) for offset, p in enumerate(probs))
            lines.append(f"  smoothing lambda {removal.smoothing_lambda}: each example drops 0-{SMOOTHING_SUPPORT - 1} "
                         f"extra tokens (mean {mean:.3f}, P(0) = {float(probs[0]):.3f}) on top of the count below")
        final = show_count(plan.rows[-1].removal_count if plan.rows else 0)
        lines.append("  at the last step: " + ("the whole CoT is removed" if final == ALL else
                     f"{final} CoT tokens scheduled for removal (clipped to each example's CoT length)"))
    shown = table_rows(plan)
    if len(shown) < len(plan.rows):
        lines.append(f"showing {len(shown)} of {len(plan.rows)} steps: every "
                     f"{math.ceil(len(plan.rows) / SAMPLED_ROWS)}th, every change, the last")
    return "\n".join(lines)


def plot_schedule(plan: SchedulePlan, path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .ops.schedule import REMOVE_ALL

    panels = [key for key, block in (("rate", plan.masked_thought), ("removal", plan.cot_removal)) if block is not None]
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels)), sharex=True, squeeze=False)
    steps = [row.step for row in plan.rows]
    for axis, key in zip(axes[:, 0], panels):
        if key == "rate":
            axis.plot(steps, [row.mask_rate for row in plan.rows], drawstyle="steps-post", color="tab:blue")
            axis.set_ylabel("mask rate")
            axis.set_ylim(0, max(0.05, plan.masked_thought.ratio * 1.1))
        else:
            finite = [row.removal_count for row in plan.rows if row.removal_count != REMOVE_ALL]
            top = (max(finite) if finite else 0) + 1
            counts = [top if row.removal_count == REMOVE_ALL else row.removal_count for row in plan.rows]
            axis.plot(steps, counts, drawstyle="steps-post", color="tab:red")
            axis.set_ylabel("CoT tokens removed\n(scheduled)")
            if top in counts:
                axis.axhline(top, color="tab:red", linestyle=":", linewidth=0.8)
                axis.set_ylim(-0.05 * top, top * 1.15)
                axis.annotate("whole CoT", (steps[counts.index(top)], top), textcoords="offset points", xytext=(4, 4))
        for epoch_start in range(plan.shape.optimizer_steps_per_epoch, len(steps), plan.shape.optimizer_steps_per_epoch):
            axis.axvline(epoch_start, color="grey", linewidth=0.5, alpha=0.5)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step (grey lines: epochs)")
    if title:
        axes[0, 0].set_title(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ---- command -------------------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for name in ("dataset_size", "micro_batches_per_epoch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise _error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    plan = plan_schedule(config, args.dataset_size, micro_batches_per_epoch=args.micro_batches_per_epoch)
    print(describe(plan, args.config))
    print()
    print(format_table(plan))
    if args.plot:
        print(f"\nplot: {plot_schedule(plan, args.plot, title=Path(args.config).name)}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="show the mask rate and CoT tokens removed per optimizer step (no model loaded)",
        description="Print (and plot) what a config's masked_thought / cot_removal blocks do at each "
        "optimizer step, computed with the trainer's own schedule functions.",
    )
    parser.add_argument("config", help="axolotl YAML config")
    parser.add_argument("--plot", metavar="FILE.png", help="also write a PNG plot")
    parser.add_argument("--dataset-size", type=int, metavar="N",
                        help="training rows before the validation split (default: count the local dataset files)")
    parser.add_argument("--micro-batches-per-epoch", type=int, metavar="N",
                        help="override the derived count (per rank), e.g. the real value of a packed run")
    parser.set_defaults(func=command)
