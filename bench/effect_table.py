"""Markdown table of ``bench/effect.py`` runs: per method, each seed's figures and median [min, max].

python bench/effect_table.py RESULT.json|LOG [...] --methods cot,mft_0.2 --mode with_cot
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import spread
from plot_effect import read_runs


def median_range(values: list[float]) -> str:
    stats = spread(values)
    return f"{stats['median']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--methods", required=True)
    parser.add_argument("--mode", choices=("with_cot", "no_cot"), default="with_cot")
    args = parser.parse_args(argv)
    runs = [run for path in args.results for run in read_runs(Path(path))]
    print(
        f"| method | seeds | test exact ({args.mode}) per seed | median [min, max] | val exact | "
        f"test digits | steps | train s per run | parameters |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        exact = [r["accuracy"][args.mode] for r in mine]
        seconds = ", ".join(str(round(r["train_seconds"])) for r in mine)
        parameters = mine[0].get("parameters") or 0
        print(
            f"| {method} | {','.join(str(r['seed']) for r in mine)} | {', '.join(f'{v:.3f}' for v in exact)} | "
            f"{median_range(exact)} | {median_range([r['val_accuracy'][args.mode] for r in mine])} | "
            f"{median_range([r['digit_accuracy'][args.mode] for r in mine])} | {mine[0]['steps']} | "
            f"{seconds} | {parameters:,} |"
        )


if __name__ == "__main__":
    main()
