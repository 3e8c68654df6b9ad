#!/usr/bin/env python
"""Summarise bench/mft_recovery.py records: median [min, max] over seeds per arm.

  python bench/mft_recovery_table.py --tag r3x3 [--split test] [--results bench/results/mft_recovery]

Columns: clean with-CoT exact match, accuracy after one injected CoT error, the recovery ratio
against SFT (the arm's median after-error accuracy over SFT's), the after-error accuracy over
the clean accuracy (per seed, then the median), the fraction of the problems answered right clean
that are still answered right after the error (per-problem lists: ``--rescore`` adds them to older
records), the per-seed figures and the runs' train CPU / wall seconds. Failed or unfinished runs are listed below the table, never dropped silently.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def survival(scores: dict) -> float | None:
    """Of the problems answered right clean, the fraction still answered right after the error
    (needs the per-problem lists; None for a record without them)."""
    clean, after = scores.get("clean_correct_each"), scores.get("after_error_correct_each")
    if clean is None or after is None or len(clean) != len(after) or not any(clean):
        return None
    return sum(c and a for c, a in zip(clean, after)) / sum(clean)


def arm_key(record: dict) -> tuple:
    if record["arm"] == "sft":
        return (0, "", 0.0)
    return (1, 0 if record["replacement"] == "random" else 1, record["ratio"])


def arm_label(key: tuple) -> str:
    if key[0] == 0:
        return "SFT"
    return f"MFT {key[2]:g} {'`<mask>`' if key[1] else 'random'}"


def table(records: list[dict], split: str) -> str:
    arms: dict[tuple, list[dict]] = {}
    for record in records:
        if record.get("status") == "ok" and split in record.get("accuracy", {}):
            arms.setdefault(arm_key(record), []).append(record)
    sft = arms.get((0, "", 0.0), [])
    sft_after = statistics.median([r["accuracy"][split]["after_error"]["accuracy"] for r in sft]) if sft else None
    lines = [
        f"| arm | seeds | clean exact ({split}) | after one error | recovery vs SFT | kept after error "
        "| survived, of the clean-correct | per seed: clean / after error | train CPU s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(arms):
        runs = sorted(arms[key], key=lambda r: r["seed"])
        clean = [r["accuracy"][split]["clean"]["accuracy"] for r in runs]
        after = [r["accuracy"][split]["after_error"]["accuracy"] for r in runs]
        kept = [a / c for a, c in zip(after, clean) if c > 0]
        survived = [survival(r["accuracy"][split]) for r in runs]
        survived = [value for value in survived if value is not None]
        survived_text = spread(survived) + (f" ({len(survived)} seeds)" if len(survived) < len(runs) else "")
        ratio = f"{statistics.median(after) / sft_after:.2f}x" if sft_after else "-"
        n_clean = runs[0]["accuracy"][split]["clean"]["n"]
        n_after = runs[0]["accuracy"][split]["after_error"]["n"]
        cpu = ", ".join(f"{r['train_call_cpu_s']:.0f}" for r in runs)
        wall = ", ".join(f"{r['wall_s']:.0f}" for r in runs)
        per_seed = ", ".join(f"s{r['seed']} {c:.3f} / {a:.3f}" for r, c, a in zip(runs, clean, after))
        lines.append(
            f"| {arm_label(key)} | {','.join(str(r['seed']) for r in runs)} | {spread(clean)} (n {n_clean}) "
            f"| {spread(after)} (n {n_after}) | {ratio} | {spread(kept)} | {survived_text} | {per_seed} "
            f"| {cpu} | {wall} |"
        )
    others = [r for r in records if r.get("status") != "ok"]
    for record in others:
        lines.append(f"\nnot in the table: {record['name']} ({record.get('status')}: {record.get('error', '')})")
    return "\n".join(lines)


def paired(records: list[dict], split: str) -> str:
    """Per MFT arm: on the problems that both it and SFT of the same seed answer right clean, the
    fraction each still answers right after the error (the same problems for both: no selection effect)."""
    by_name = {
        (r["arm"], r["replacement"], r["ratio"], r["seed"]): r["accuracy"][split]
        for r in records
        if r.get("status") == "ok" and "clean_correct_each" in r.get("accuracy", {}).get(split, {})
    }
    lines = [
        f"| arm | seed | problems right clean for both ({split}) | SFT survives | MFT survives |",
        "|---|---|---|---|---|",
    ]
    mft_keys = sorted((k for k in by_name if k[0] == "mft"), key=lambda k: (k[1] != "random", k[2], k[3]))
    for arm, replacement, ratio, seed in mft_keys:
        sft = by_name.get(("sft", None, None, seed))
        if sft is None:
            continue
        mft = by_name[(arm, replacement, ratio, seed)]
        both = [i for i, (a, b) in enumerate(zip(sft["clean_correct_each"], mft["clean_correct_each"])) if a and b]
        if not both:
            continue
        sft_kept = sum(sft["after_error_correct_each"][i] for i in both) / len(both)
        mft_kept = sum(mft["after_error_correct_each"][i] for i in both) / len(both)
        label = arm_label((1, 0 if replacement == "random" else 1, ratio))
        lines.append(f"| {label} | {seed} | {len(both)} | {sft_kept:.3f} | {mft_kept:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--results", default="bench/results/mft_recovery")
    args = parser.parse_args()
    records = [json.loads(path.read_text()) for path in sorted(Path(args.results).glob(f"{args.tag}_*.json"))]
    print(table(records, args.split))
    print()
    print(paired(records, args.split))


if __name__ == "__main__":
    main()
