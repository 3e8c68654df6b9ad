#!/usr/bin/env python
"""Markdown tables of bench/si_2x2.py records: no-CoT exact match per seed at each scored step, and
median [min, max] over seeds (the spread the bench reports).

  python bench/si_2x2_table.py --tags distinct16k:si distinct16k:nocot gate16k:si
  python bench/si_2x2_table.py --tags gatepos16k:si distinct16k:nocot --plot bench/figures/si_2x2_16k.png

Each ``TAG:ARM`` reads ``RESULTS/TAG_ARM_seed*.json``; records whose status is not ``ok`` are listed
as such, never scored.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


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
    args = parser.parse_args()
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


def plot(drawn: list, split: str, path: str) -> None:
    """No-CoT exact match against the step (one line per seed) and the mean CoT tokens removed per
    training example (``cot_removal/removed_tokens_mean``) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, removed) = plt.subplots(1, 2, figsize=(11, 3.6))
    for index, (tag, arm, records, curves) in enumerate(drawn):
        color = f"C{index}"
        for record in records:
            points = curves[record["seed"]]
            label = f"{tag} {arm}" if record is records[0] else None
            acc.plot(list(points), [p["accuracy"] for p in points.values()], "o-", color=color, label=label, alpha=0.8)
            history = [e for e in record["history"] if "cot_removal/removed_tokens_mean" in e]
            if history:
                removed.plot(
                    [e["step"] for e in history],
                    [e["cot_removal/removed_tokens_mean"] for e in history],
                    color=color,
                    alpha=0.8,
                    label=label,
                )
    acc.set(xlabel="optimizer step", ylabel=f"no-CoT exact match ({split})", ylim=(0, 1))
    removed.set(xlabel="optimizer step", ylabel="CoT tokens removed (mean per example)")
    acc.legend(fontsize=8)
    removed.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
