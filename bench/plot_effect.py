"""Held-out accuracy against the optimizer step, from ``bench/effect.py`` results.

Reads the ``curve`` of every run in one or more ``effect_result.json`` files (the
in-training accuracy callback, ``cot_format.eval_accuracy_samples``, on the
validation split) and draws one line per run, one colour per method.

    python bench/plot_effect.py OUT.png RESULT.json|LOG [...] --methods cot,mft_0.2 --mode cot
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

METRIC = {"cot": "eval_accuracy_cot", "no_cot": "eval_accuracy_no_cot"}


def read_runs(path: Path, every: int = 0) -> list[dict]:
    """The runs of an ``effect_result.json``, or the per-run JSON lines ``effect.py`` prints (its log).

    ``every`` > 0 reads instead the training log ``METHOD_sSEED.log`` of a run stopped before its
    end (no record yet): its k-th accuracy line (from 0) is the evaluation at step ``k * every``."""
    if path.suffix == ".json":
        return json.loads(path.read_text())["runs"]
    if every:
        import ast

        method, seed = re.fullmatch(r"(.+)_s(\d+)\.log", path.name).groups()
        lines = re.findall(r"\{'eval_accuracy_cot'[^}]*\}", path.read_text())
        curve = []
        for k, line in enumerate(lines):
            entry = ast.literal_eval(line)
            curve.append(
                {
                    "step": k * every,
                    "eval_accuracy_cot": float(entry["eval_accuracy_cot"]),
                    "eval_accuracy_no_cot": float(entry["eval_accuracy_no_cot"]),
                }
            )
        return [{"method": method, "seed": int(seed), "curve": curve}]
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith('{"method"')]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("results", nargs="+")
    parser.add_argument("--methods", required=True, help="comma-separated, in legend order")
    parser.add_argument("--labels", help="comma-separated legend names (default: the method names)")
    parser.add_argument("--mode", choices=sorted(METRIC), default="cot", help="with or without CoT at generation")
    parser.add_argument("--title", default="")
    parser.add_argument(
        "--partial-every",
        type=int,
        default=0,
        help="read .log files as training logs of unfinished runs, evaluated every N steps",
    )
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = args.methods.split(",")
    labels = dict(zip(methods, args.labels.split(",") if args.labels else methods))
    runs = [
        run
        for path in args.results
        for run in read_runs(Path(path), args.partial_every if re.search(r"_s\d+\.log$", path) else 0)
    ]
    figure, axis = plt.subplots(figsize=(5, 3.2))
    for index, method in enumerate(methods):
        mine = sorted((run for run in runs if run["method"] == method), key=lambda run: run["seed"])
        for number, run in enumerate(mine):
            points = [(entry["step"], entry[METRIC[args.mode]]) for entry in run["curve"] if METRIC[args.mode] in entry]
            if points:
                steps, values = zip(*points)
                axis.plot(
                    steps,
                    values,
                    color=f"C{index}",
                    alpha=0.8,
                    linewidth=1.2,
                    marker=".",
                    label=f"{labels[method]} ({len(mine)} seed{'s' if len(mine) > 1 else ''})" if number == 0 else None,
                )
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(f"validation accuracy ({'with' if args.mode == 'cot' else 'no'} CoT)")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(args.title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
