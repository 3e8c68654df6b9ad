#!/usr/bin/env python
"""Markdown tables of bench/si_2x2.py records: no-CoT exact match per seed at each scored step, and
median [min, max] over seeds (the spread the bench reports).

  python bench/si_2x2_table.py --tags distinct16k:si distinct16k:nocot gate16k:si

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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
