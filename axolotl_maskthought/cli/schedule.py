"""``axolotl-maskthought schedule CONFIG.yml``: what a config will do, step by step.

No model is loaded. The run's shape and the per-step mask rate and removal count come from
:mod:`axolotl_maskthought.adapters.axolotl.plan`; with ``cot_removal`` the training files are
tokenized (:mod:`~axolotl_maskthought.adapters.axolotl.dataset_lengths`) and the CoT lengths set
against the count at the last step. This module prints the table and the report, and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

from axolotl_maskthought.adapters.axolotl.dataset_lengths import COT_SAMPLE_ROWS, training_cot_lengths
from axolotl_maskthought.adapters.axolotl.plan import SchedulePlan, ScheduleRow, cot_report, plan_schedule
from axolotl_maskthought.cli import CommandError
from axolotl_maskthought.ops.schedule import show_count

FULL_TABLE_STEPS = 60  # longer runs print a sample of steps plus every change


SAMPLED_ROWS = 30


def load_config(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    with open(path, encoding="utf-8") as handle:
        try:
            config = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise CommandError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(config, dict):
        raise CommandError(f"{path}: expected a mapping of config keys")
    return config


def _notes_for(plan: SchedulePlan, previous: ScheduleRow | None, row: ScheduleRow) -> str:
    from axolotl_maskthought.ops.schedule import REMOVE_ALL

    notes = []
    if row.removal_count_most is not None:  # loss gate: a range, no single change point
        for count, previous_count, bound in (
            (row.removal_count_most, None if previous is None else previous.removal_count_most, "earliest"),
            (row.removal_count, None if previous is None else previous.removal_count, "latest"),
        ):
            if previous is not None and count != previous_count:
                what = "no CoT left" if count == REMOVE_ALL else f"token {count}"
                notes.append(f"{what} at the {bound}")
        return ", ".join(notes)
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


def capped_at_longest_cot(plan: SchedulePlan, longest_cot: int | None) -> SchedulePlan:
    """The plan as the table shows it: a removal count at or past ``longest_cot`` (tokens) is
    :data:`~axolotl_maskthought.ops.schedule.REMOVE_ALL`, since no example has CoT left by then.

    The counts a schedule reaches past the longest CoT (a loss gate's earliest bound runs on to
    the end of the run) change nothing in training, so the table neither lists them nor notes
    them. ``longest_cot`` None (lengths not computed) returns the plan unchanged.
    """
    from axolotl_maskthought.ops.schedule import REMOVE_ALL

    if longest_cot is None or plan.cot_removal is None:
        return plan

    def cap(count: int | None) -> int | None:
        return REMOVE_ALL if count is not None and count != REMOVE_ALL and count >= longest_cot else count

    rows = [
        dataclasses.replace(row, removal_count=cap(row.removal_count), removal_count_most=cap(row.removal_count_most))
        for row in plan.rows
    ]
    return dataclasses.replace(plan, rows=rows)


def table_rows(plan: SchedulePlan) -> list[ScheduleRow]:
    """Every step of a short run; for long runs a regular sample plus every change point."""
    if len(plan.rows) <= FULL_TABLE_STEPS:
        return list(plan.rows)
    every = math.ceil(len(plan.rows) / SAMPLED_ROWS)
    keep = {row.step for row in plan.rows if row.step % every == 0}
    keep.update(plan.change_steps())
    keep.add(plan.rows[-1].step)
    return [row for row in plan.rows if row.step in keep]


def show_removed(row: ScheduleRow) -> str:
    """The table's CoT-removed cell: the count, or the gate's ``fewest-most`` range."""
    if row.removal_count_most is None or row.removal_count_most == row.removal_count:
        return show_count(row.removal_count)
    return f"{show_count(row.removal_count)}-{show_count(row.removal_count_most)}"


def gate_bounds(plan: SchedulePlan, tokens: int | None = None) -> list[tuple[int, int, int | None]]:
    """(token, earliest step, latest step) at which a loss-gated pace removes each token.

    ``tokens``: how many to list (default: as many as can go within the run). Steps beyond the
    run are None for the latest bound; tokens that cannot go even at the earliest are left out.
    """
    from axolotl_maskthought.adapters.axolotl.plan import removal_start

    removal = plan.cot_removal
    gate, start, last = removal.loss_gate, removal_start(removal, plan.shape), plan.shape.max_steps - 1
    if tokens is None:
        tokens = max(0, (last - start) // gate.min_steps)
    if removal.remove_all_at is not None:
        tokens = min(tokens, removal.remove_all_at)
    bounds = []
    for token in range(1, tokens + 1):
        earliest, latest = start + token * gate.min_steps, start + token * gate.max_steps
        if earliest > last:
            break
        bounds.append((token, earliest, latest if latest <= last else None))
    return bounds


def format_gate_bounds(plan: SchedulePlan, tokens: int | None = None) -> str:
    """The per-token bounds of a loss-gated pace as text (token k, earliest, latest step)."""
    removal = plan.cot_removal
    rows = gate_bounds(plan, tokens)
    lines = [
        f"loss_gate bounds: token k goes between step start + k x {removal.loss_gate.min_steps} (earliest) and "
        f"start + k x {removal.loss_gate.max_steps} (latest); 'after the run' = the run may end first"
    ]
    if removal.remove_all_at is not None:
        lines.append(f"  the whole CoT goes with token {removal.remove_all_at}")
    lines.append("  token  earliest  latest")
    for token, earliest, latest in rows:
        lines.append(f"  {token:>5}  {earliest:>8}  {'after the run' if latest is None else latest:>6}")
    return "\n".join(lines)


def format_table(plan: SchedulePlan) -> str:
    """The per-step table; a technique the config leaves out gets no column."""
    columns: list[tuple[str, Callable[[ScheduleRow], str]]] = [
        ("step", lambda row: str(row.step)),
        ("epoch", lambda row: str(row.epoch)),
        ("micro-batch", lambda row: str(row.first_micro_batch)),
    ]
    if plan.masked_thought is not None:
        columns.append(("mask rate", lambda row: f"{row.mask_rate:.4f}"))
    if plan.cot_removal is not None:  # a gate's cell is a range: the latest bound's count - the earliest's
        title = "CoT removed" if plan.cot_removal.loss_gate is None else "CoT removed (fewest-most)"
        columns.append((title, show_removed))
    numeric = len(columns)
    lines = [(*(title for title, _ in columns), "")]
    by_step = {row.step: row for row in plan.rows}
    for row in table_rows(plan):
        notes = _notes_for(plan, by_step.get(row.step - 1), row)
        lines.append((*(cell(row) for _, cell in columns), notes))
    widths = [max(len(line[i]) for line in lines) for i in range(numeric + 1)]
    text = [
        "  ".join(
            cell.rjust(width) if i < numeric else cell for i, (cell, width) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    ]
    return "\n".join(text)


def describe(plan: SchedulePlan, config_path: str | None = None) -> str:
    from axolotl_maskthought.ops.schedule import SMOOTHING_SUPPORT, smoothing_distribution, steps_per_removed_token

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
    if removal is not None and removal.pace != "tokens_per_epoch":
        from axolotl_maskthought.adapters.axolotl.plan import removal_start

        start = removal_start(removal, shape)
        if removal.pace == "steps_per_token":
            text = f"cot_removal: one more token every {removal.steps_per_token} optimizer steps from step {start}"
        else:
            gate = removal.loss_gate
            text = (
                f"cot_removal: loss-gated from step {start}: the next token goes once the averaged training loss "
                f"has recovered {gate.recovery:g} of the last removal's jump, after {gate.min_steps} to "
                f"{gate.max_steps} optimizer steps per token (EMA decay {gate.ema_beta:g})"
            )
        text += f", side {removal.side}"
        if removal.remove_all_at is not None:
            text += f", whole CoT once {removal.remove_all_at} are removed"
        text += "; optimizer reset at each increase" if removal.reset_optimizer else "; no optimizer reset"
        lines.append(text)
        if start:
            lines.append(f"  steps 0-{start - 1} train on the full CoT: nothing removed, no smoothing")
    elif removal is not None:
        interval = steps_per_removed_token(shape.micro_batches_per_epoch, removal.tokens_per_epoch)
        text = (
            f"cot_removal: {removal.tokens_per_epoch} tokens per epoch -> one more every {interval} "
            f"micro-batches (round({shape.micro_batches_per_epoch} / {removal.tokens_per_epoch}))"
            if interval
            else f"cot_removal: {removal.tokens_per_epoch} tokens per epoch exceeds the "
            f"{shape.micro_batches_per_epoch} micro-batches per epoch: one more every micro-batch"
        )
        text += f", side {removal.side}, from epoch {removal.start_epoch + 1}"
        if removal.remove_all_at is not None:
            text += f", whole CoT once {removal.remove_all_at} are scheduled"
        text += (
            "; optimizer reset at each increase (unless the whole CoT was already gone)"
            if removal.reset_optimizer
            else "; no optimizer reset"
        )
        lines.append(text)
        if removal.start_epoch:
            lines.append(f"  epochs 1-{removal.start_epoch} train on the full CoT: nothing removed, no smoothing")
    if removal is not None:
        if removal.smoothing_lambda is not None:
            probs = smoothing_distribution(removal.smoothing_lambda)
            mean = sum(offset * float(p) for offset, p in enumerate(probs))
            lines.append(
                f"  smoothing lambda {removal.smoothing_lambda}: each example drops 0-{SMOOTHING_SUPPORT - 1} "
                f"extra tokens (mean {mean:.3f}, P(0) = {float(probs[0]):.3f}) on top of the count below"
            )
        final = show_removed(plan.rows[-1]) if plan.rows else "0"
        lines.append(
            "  at the last step: "
            + (
                "the whole CoT is removed"
                if final == "all"
                else f"{final} CoT tokens scheduled for removal (clipped to each example's CoT length)"
            )
        )
    shown = table_rows(plan)
    if len(shown) < len(plan.rows):
        lines.append(
            f"showing {len(shown)} of {len(plan.rows)} steps: every "
            f"{math.ceil(len(plan.rows) / SAMPLED_ROWS)}th, every change, the last"
        )
    return "\n".join(lines)


def plot_schedule(
    plan: SchedulePlan, path: str | Path, title: str | None = None, longest_cot: int | None = None
) -> Path:
    """The mask rate and removal count per optimizer step as a PNG; ``longest_cot``
    (tokens) draws the count the schedule must reach to leave no CoT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from axolotl_maskthought.ops.schedule import REMOVE_ALL

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
            if plan.rows and plan.rows[0].removal_count_most is not None:  # loss gate: its two bounds
                most = [top if row.removal_count_most == REMOVE_ALL else row.removal_count_most for row in plan.rows]
                axis.plot(steps, most, drawstyle="steps-post", color="tab:red", linestyle="--", linewidth=0.8)
                axis.fill_between(steps, counts, most, step="post", color="tab:red", alpha=0.15)
                top = max(top, max(most))
            axis.set_ylabel("CoT tokens removed\n(scheduled)")
            if longest_cot:
                axis.axhline(longest_cot, color="black", linestyle="--", linewidth=0.8)
                axis.annotate(
                    f"longest CoT ({longest_cot})", (0, longest_cot), textcoords="offset points", xytext=(4, -12)
                )
            if top in counts:
                axis.axhline(top, color="tab:red", linestyle=":", linewidth=0.8)
                axis.set_ylim(-0.05 * top, max(top, longest_cot or 0) * 1.15)
                axis.annotate("whole CoT", (steps[counts.index(top)], top), textcoords="offset points", xytext=(4, 4))
        for epoch_start in range(
            plan.shape.optimizer_steps_per_epoch, len(steps), plan.shape.optimizer_steps_per_epoch
        ):
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
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.cot_rows < 0:
        raise CommandError(f"--cot-rows must be 0 (all) or more, got {args.cot_rows}")
    plan = plan_schedule(config, args.dataset_size, micro_batches_per_epoch=args.micro_batches_per_epoch)
    found = training_cot_lengths(config, args.cot_rows) if plan.cot_removal is not None else None
    report = None
    if found is not None and found.lengths is not None:
        report = cot_report(plan, config, found.lengths, args.dataset_size, args.micro_batches_per_epoch)
    longest = report.lengths.maximum if report is not None else None
    shown = capped_at_longest_cot(plan, longest)
    print(describe(shown, args.config))
    if longest is not None:
        print(f"counts at or past the longest CoT ({longest} tokens) are shown as 'all': no CoT left")
    print()
    print(format_table(shown))
    if found is not None:
        print()
        if report is None:
            print(
                f"CoT lengths: not computed: {found.note}; whether the schedule reaches the end of "
                "the CoTs is not checked"
            )
        else:
            print(f"CoT lengths: {found.note}")
            print("\n".join(report.lines()))
    if plan.cot_removal is not None and plan.cot_removal.loss_gate is not None:
        print()
        print(format_gate_bounds(plan, longest))
    if args.plot:
        print(f"\nplot: {plot_schedule(shown, args.plot, title=Path(args.config).name, longest_cot=longest)}")
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
    parser.add_argument(
        "--dataset-size",
        type=int,
        metavar="N",
        help="training rows before the validation split (default: count the local dataset files)",
    )
    parser.add_argument(
        "--micro-batches-per-epoch",
        type=int,
        metavar="N",
        help="override the derived count (per rank), e.g. the real value of a packed run",
    )
    parser.add_argument(
        "--cot-rows",
        type=int,
        default=COT_SAMPLE_ROWS,
        metavar="N",
        help="CoT lengths from at most N training rows, a seeded random sample (default: %(default)s; 0 = all)",
    )
    parser.set_defaults(func=command)
