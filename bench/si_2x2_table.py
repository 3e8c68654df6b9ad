#!/usr/bin/env python
"""Markdown tables of bench/si_2x2.py records: no-CoT exact match per seed at each scored step, and
median [min, max] over seeds (the spread the bench reports).

  python bench/si_2x2_table.py --tags distinct16k:si distinct16k:nocot gate16k:si
  python bench/si_2x2_table.py --tags gatepos16k:si distinct16k:nocot --plot bench/figures/si_2x2_16k.png
  python bench/si_2x2_table.py --study --tags s3x3p500:si s3x3gate:si s3x3:nocot --plot bench/figures/si_3x3_study.png

``--study``: one row per run (pace, width, steps, CPU time, tokens removed, no-CoT exact at the end), and
the plot draws the in-training validation curve (``eval_accuracy_no_cot``, every ``--eval-steps``).

Each ``TAG:ARM`` reads ``RESULTS/TAG_ARM_seed*.json``; records whose status is not ``ok`` are listed
as such, never scored.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import toy_run


def spread(values: list[float]) -> str:
    """``median [min, max]`` to 3 decimals (the one value alone for a single seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def curve(record: dict, split: str) -> dict[int, dict]:
    """Step -> the split's score: the checkpoints of ``--score-steps`` and the final model."""
    points = {int(step): scores[split] for step, scores in (record.get("accuracy_at_step") or {}).items()}
    points[int(record["steps"])] = record["accuracy"][split]
    return dict(sorted(points.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tags", nargs="+", required=True, help="TAG:ARM pairs")
    parser.add_argument("--results", default="bench/results/si_2x2")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--plot", help="also draw the curves (accuracy, CoT tokens removed) to this PNG")
    parser.add_argument("--study", action="store_true", help="one row per run; in-training validation curves")
    parser.add_argument("--work", default="bench/work/si_2x2", help="--study: where unfinished runs keep checkpoints")
    args = parser.parse_args()
    if args.study:
        study(args)
        return
    drawn = []
    for pair in args.tags:
        tag, arm = pair.split(":")
        paths = sorted(Path(args.results).glob(f"{tag}_{arm}_seed*.json"))
        records = [json.loads(path.read_text()) for path in paths if path.stem.split("seed")[-1].isdigit()]
        ok = [r for r in records if r.get("status") == "ok"]
        for record in records:
            if record.get("status") != "ok":
                print(f"{record['name']}: {record.get('status')} ({record.get('error', '')})")
        if not ok:
            continue
        curves = {r["seed"]: curve(r, args.split) for r in ok}
        drawn.append((tag, arm, ok, curves))
        steps = sorted(set.intersection(*(set(c) for c in curves.values())))
        print(f"\n{tag} {arm}: no-CoT exact match on {args.split} (n = {ok[0]['accuracy'][args.split]['n']})\n")
        print("| step | " + " | ".join(f"seed {seed}" for seed in curves) + " | median [min, max] |")
        print("|---|" + "---|" * (len(curves) + 1))
        for step in steps:
            values = [curves[seed][step]["accuracy"] for seed in curves]
            cells = [f"{curves[seed][step]['accuracy']:.3f} ({curves[seed][step]['correct']})" for seed in curves]
            print(f"| {step} | " + " | ".join(cells) + f" | {spread(values)} |")
        walls = ", ".join(f"{r['train_runtime_s']:.0f}" for r in ok)
        print(f"\ntraining wall s (shared cores): {walls}")
    if args.plot:
        plot(drawn, args.split, args.plot)


def pace_of(record: dict) -> str:
    """The run's removal pace in words (``no-CoT training`` for the baseline)."""
    run = record["args"]
    if record["arm"] == "nocot":
        return "no-CoT training"
    if run["pace"] == "steps":
        return f"{run['steps_per_token']:g} steps/token"
    if run["pace"] == "gate":
        return f"gate {run['gate_min']}-{run['gate_max']}, recovery {run['gate_recovery']:g}"
    return f"delta {run['steps_per_token']:g}"


def validation_curve(record: dict) -> list[tuple[int, float]]:
    """(step, no-CoT exact) of the in-training accuracy callback (the validation problems)."""
    return [(e["step"], e["eval_accuracy_no_cot"]) for e in record["history"] if "eval_accuracy_no_cot" in e]


def with_checkpoint_progress(record: dict, work: Path) -> dict:
    """An unfinished run's record with the steps and log history of its last saved checkpoint
    (``trainer_state.json``), its status saying so; unchanged when it has none."""
    last = toy_run.last_checkpoint(work / "runs" / record["name"] / "out")
    if last is None:
        return record
    state = json.loads((last / "trainer_state.json").read_text())
    return {
        **record,
        "status": f"{record.get('status')}, checkpoint {state['global_step']}",
        "steps": state["global_step"],
        "history": state["log_history"],
    }


def cpu_cell(record: dict) -> str:
    """Training CPU seconds and CPU ms per step; a resumed run's total is its steps at the CPU cost per
    step of the last call (``~``), since the earlier calls' CPU time was not recorded."""
    cpu = record.get("train_call_cpu_s")
    if not cpu or not isinstance(record.get("steps"), int):
        return "-"
    first = toy_run.resumed_step(record)
    per_step = cpu / (record["steps"] - first)
    total = f"~{per_step * record['steps']:.0f}" if first else f"{cpu:.0f}"
    return f"{total} ({per_step * 1000:.0f})"


def study(args) -> None:
    """One row per run of the given tags, and (``--plot``) their validation and removal curves."""
    print(
        "| run | pace | width | steps | training CPU-s (ms/step) | CoT tokens removed (end) | best val (step) "
        "| val | test |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    drawn = []
    for pair in args.tags:
        tag, arm = pair.split(":")
        for path in sorted(Path(args.results).glob(f"{tag}_{arm}_seed*.json")):
            if not path.stem.split("seed")[-1].isdigit():
                continue
            record = json.loads(path.read_text())
            name, status = record["name"], record.get("status")
            if status != "ok":
                record = with_checkpoint_progress(record, Path(args.work))
                status = record["status"]
            history = record.get("history") or []
            removed = removal_curve(record)[1]
            curve_points = validation_curve(record) if history else []
            best = max(curve_points, key=lambda point: point[1], default=None)
            accuracy = record.get("accuracy") or {}
            cells = [
                name if status == "ok" else f"{name} ({status})",
                pace_of(record),
                str(record["args"]["hidden"]),
                str(record.get("steps", "-")),
                cpu_cell(record),
                f"{removed[-1]:.1f}" if removed else "0",
                f"{best[1]:.3f} ({best[0]})" if best else "-",
                f"{accuracy['val']['accuracy']:.3f}" if "val" in accuracy else "-",
                f"{accuracy['test']['accuracy']:.3f}" if "test" in accuracy else "-",
            ]
            print("| " + " | ".join(cells) + " |")
            if history:
                drawn.append((name, record, curve_points))
    if args.plot:
        plot_study(drawn, args.plot)


def removal_curve(record: dict) -> tuple[list[int], list[float]]:
    """(steps, mean CoT tokens removed per training example) from the run's log history."""
    logged = [e for e in record.get("history") or [] if "cot_removal/removed_tokens_mean" in e]
    return [e["step"] for e in logged], [e["cot_removal/removed_tokens_mean"] for e in logged]


def two_panels(figsize: tuple[float, float]):
    """A figure with the accuracy panel left and the CoT-removed panel right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=figsize)


def save_panels(fig, acc, removed, accuracy_label: str, fontsize: int, path: str) -> None:
    """Label both panels (accuracy 0-1 against the step; tokens removed), add legends and write ``path``."""
    acc.set(xlabel="optimizer step", ylabel=accuracy_label, ylim=(0, 1))
    removed.set(xlabel="optimizer step", ylabel="CoT tokens removed (mean per example)")
    acc.legend(fontsize=fontsize)
    removed.legend(fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def plot_study(drawn: list, path: str) -> None:
    """In-training validation no-CoT exact and mean CoT tokens removed against the step, a line per run."""
    fig, (acc, removed) = two_panels((12, 4))
    tags = list(dict.fromkeys(name.rsplit("_seed", 1)[0] for name, _, _ in drawn))
    styles = ("-", "--", ":")
    for name, record, points in drawn:  # a colour per tag (pace, arm), a line style per seed
        color = f"C{tags.index(name.rsplit('_seed', 1)[0]) % 10}"
        style = styles[record["args"]["seed"] % len(styles)]
        acc.plot([p[0] for p in points], [p[1] for p in points], "o" + style, color=color, label=name, markersize=3)
        steps, tokens = removal_curve(record)
        if steps:
            removed.plot(steps, tokens, style, color=color, label=name)
    save_panels(fig, acc, removed, "no-CoT exact (validation, in training)", 7, path)


def plot(drawn: list, split: str, path: str) -> None:
    """No-CoT exact match against the step (one line per seed) and the mean CoT tokens removed per
    training example (``cot_removal/removed_tokens_mean``) against the step."""
    fig, (acc, removed) = two_panels((11, 3.6))
    for index, (tag, arm, records, curves) in enumerate(drawn):
        color = f"C{index}"
        for record in records:
            points = curves[record["seed"]]
            label = f"{tag} {arm}" if record is records[0] else None
            acc.plot(list(points), [p["accuracy"] for p in points.values()], "o-", color=color, label=label, alpha=0.8)
            steps, tokens = removal_curve(record)
            if steps:
                removed.plot(steps, tokens, color=color, alpha=0.8, label=label)
    save_panels(fig, acc, removed, f"no-CoT exact match ({split})", 8, path)


if __name__ == "__main__":
    main()
