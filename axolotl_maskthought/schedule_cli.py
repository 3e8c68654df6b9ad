"""``axolotl-maskthought schedule CONFIG.yml``: what a config will do, step by step.

No model is loaded: the run's length is derived from the config and the
number of training rows, then the trainer's own functions give, per optimizer
step, the Masked Thought rate (``masking.mask_rate``) and the CoT tokens
scheduled for removal (``schedule.optimizer_step_count``). Printed as a table,
optionally plotted. With ``cot_removal``, the training files are tokenized with
the config's tokenizer and the dataset strategies, and the CoT lengths are set
against the count at the last step (:mod:`axolotl_maskthought.cot_lengths`): a
schedule that ends with CoT left is reported with settings that fix it.

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


# ---- CoT lengths of the training data ----------------------------------------------------------------
COT_SAMPLE_ROWS = 20_000  # more rows are sampled: tokenizing costs ~0.3 ms a row


@dataclass
class TrainingCoTLengths:
    """CoT tokens per tokenized training row (None when they cannot be computed, ``note`` says why)."""

    lengths: list[int] | None
    note: str


def _tokenizer(config: dict):
    from transformers import AutoTokenizer

    source = config.get("tokenizer_config") or config.get("base_model")
    if not source:
        raise OSError("the config has no `base_model` or `tokenizer_config`")
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=bool(config.get("trust_remote_code")))
    # what axolotl's load_tokenizer adds from the YAML
    special = {key: value for key, value in (config.get("special_tokens") or {}).items() if value}
    if special:
        tokenizer.add_special_tokens(special)
    if config.get("tokens"):
        tokenizer.add_tokens(list(config["tokens"]))
    return tokenizer, str(source)


def training_cot_lengths(config: dict, sample_rows: int | None = COT_SAMPLE_ROWS, seed: int = 0) -> TrainingCoTLengths:
    """CoT lengths of the ``datasets:`` files, tokenized as training tokenizes them.

    Each entry must be a local file with a type of this package's strategies; its
    rows are tokenized by that strategy with the config's tokenizer
    (``tokenizer_config`` or ``base_model``, plus ``special_tokens`` and ``tokens``).
    Rows longer than ``sequence_len`` are left out as axolotl drops them (or cut,
    with ``excess_length_strategy: truncate``). Above ``sample_rows`` rows a seeded
    random sample is tokenized (None or 0: all). A bad row raises the strategy's
    error naming the file and row.
    """
    import importlib
    import random

    from .adapters.axolotl.validation import STRATEGY_PREFIX
    from .strategies.base import local_file, read_rows

    entries = config.get("datasets") or []
    for index, entry in enumerate(entries):
        ds_type = str(entry.get("type", "")) if isinstance(entry, dict) else ""
        if not ds_type.startswith(STRATEGY_PREFIX):
            return TrainingCoTLengths(None, f"`datasets[{index}]` ({ds_type or 'no type'}) is not one of this "
                                            "package's strategies")
        if local_file(entry) is None:
            return TrainingCoTLengths(None, f"`datasets[{index}]` is not a local file")
    try:
        tokenizer, source = _tokenizer(config)
    except (OSError, ValueError) as err:
        return TrainingCoTLengths(None, f"the tokenizer could not be loaded ({str(err).splitlines()[0]})")
    sequence_len = config.get("sequence_len")
    truncate = str(config.get("excess_length_strategy") or "drop").lower() == "truncate"
    rows = []
    for entry in entries:
        try:
            strategy = importlib.import_module(str(entry["type"])).load(tokenizer, config, entry)
        except ValueError as err:
            raise _error(str(err)) from None
        keep = strategy.filter_rows or (lambda row: True)
        rows += [(strategy, row) for _, row in read_rows(local_file(entry)) if keep(row)]
    total = len(rows)
    if sample_rows and total > sample_rows:
        rows = random.Random(seed).sample(rows, sample_rows)
    lengths, too_long = [], 0
    for strategy, row in rows:
        example = strategy.tokenize_prompt(row)
        cot_mask = example["cot_mask"]
        if sequence_len and len(example["input_ids"]) > sequence_len:
            too_long += 1
            if not truncate:
                continue
            cot_mask = cot_mask[:sequence_len]
        lengths.append(sum(1 for flag in cot_mask if flag))
    scope = f"all {total} rows" if len(rows) == total else f"a random sample of {len(rows)} of {total} rows (--cot-rows)"
    note = f"tokenized {scope} with the tokenizer of {source}"
    if too_long:
        note += (f"; {too_long} longer than sequence_len {sequence_len} "
                 + ("truncated" if truncate else "left out, as axolotl drops them"))
    return TrainingCoTLengths(lengths, note)


def cot_report(plan: SchedulePlan, config: dict, lengths: list[int], dataset_size: int | None = None,
               micro_batches_per_epoch: int | None = None):
    """:func:`~axolotl_maskthought.cot_lengths.cot_left_report` for the planned run."""
    from .cot_lengths import cot_left_report

    shape = plan.shape

    def steps_for_epochs(epochs: int) -> int:
        return run_shape({**config, "num_epochs": epochs, "max_steps": None}, dataset_size, shape.world_size,
                         micro_batches_per_epoch).max_steps

    uses_max_steps = bool(config.get("max_steps"))
    return cot_left_report(
        lengths, plan.cot_removal, shape.max_steps, shape.gradient_accumulation_steps, shape.micro_batches_per_epoch,
        length_setting="max_steps" if uses_max_steps else "num_epochs",
        num_epochs=None if uses_max_steps else float(config.get("num_epochs") or 1),
        steps_for_epochs=steps_for_epochs,
    )


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


def plot_schedule(plan: SchedulePlan, path: str | Path, title: str | None = None,
                  longest_cot: int | None = None) -> Path:
    """The mask rate and removal count per optimizer step as a PNG; ``longest_cot``
    (tokens) draws the count the schedule must reach to leave no CoT."""
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
            if longest_cot:
                axis.axhline(longest_cot, color="black", linestyle="--", linewidth=0.8)
                axis.annotate(f"longest CoT ({longest_cot})", (0, longest_cot), textcoords="offset points",
                              xytext=(4, -12))
            if top in counts:
                axis.axhline(top, color="tab:red", linestyle=":", linewidth=0.8)
                axis.set_ylim(-0.05 * top, max(top, longest_cot or 0) * 1.15)
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
    if args.cot_rows < 0:
        raise _error(f"--cot-rows must be 0 (all) or more, got {args.cot_rows}")
    plan = plan_schedule(config, args.dataset_size, micro_batches_per_epoch=args.micro_batches_per_epoch)
    print(describe(plan, args.config))
    print()
    print(format_table(plan))
    report = None
    if plan.cot_removal is not None:
        found = training_cot_lengths(config, args.cot_rows)
        print()
        if found.lengths is None:
            print(f"CoT lengths: not computed: {found.note}; whether the schedule reaches the end of "
                  "the CoTs is not checked")
        else:
            report = cot_report(plan, config, found.lengths, args.dataset_size, args.micro_batches_per_epoch)
            print(f"CoT lengths: {found.note}")
            print("\n".join(report.lines()))
    if args.plot:
        longest = report.lengths.maximum if report is not None else None
        print(f"\nplot: {plot_schedule(plan, args.plot, title=Path(args.config).name, longest_cot=longest)}")
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
    parser.add_argument("--cot-rows", type=int, default=COT_SAMPLE_ROWS, metavar="N",
                        help="CoT lengths from at most N training rows, a seeded random sample "
                        f"(default {COT_SAMPLE_ROWS}; 0 = all)")
    parser.set_defaults(func=command)
