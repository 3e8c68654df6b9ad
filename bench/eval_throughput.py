"""Evaluation throughput: ``evaluate_model`` batched vs batch size 1, same model and data.

In this process, ``axolotl_maskthought.eval.evaluation.evaluate_model`` (the function behind
``python -m axolotl_maskthought eval``) runs over the same test problems at each
batch size, passes interleaved and repeated; examples per second as it reports
them (generation only), median and spread, and the ratio to batch size 1 of the
same round. Accuracy must not depend on the batch size (checked and reported).

The model defaults to the explicit-CoT model bench/effect.py trains
(``effect_3x3/out/cot_s0`` under the bench work directory), evaluated with CoT on
held-out multiplication problems; without it, a tiny untrained GPT-2 is built
(then every row runs to ``--max-new-tokens``, a worst case for padding waste).
Then one timed CLI run per batch size (process start-up included).

    python bench/eval_throughput.py [--model DIR --data FILE] [--batch-sizes 1,8,32] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import OFFLINE_ENV, REPO_ROOT, WORK_DIR, command_line, machine_note, save_json, spread


def default_model_and_data(work: Path, count: int) -> tuple[Path, Path, str]:
    from axolotl_maskthought.data.files import write_lines
    from axolotl_maskthought.data.generators import generate_multiplication

    data = work / "mult3_test.txt"
    write_lines(data, generate_multiplication(3, 3, count, seed=2))
    trained = WORK_DIR / "effect_3x3" / "out" / "cot_s0"
    if (trained / "config.json").exists():
        return trained, data, "trained explicit-CoT GPT-2 from bench/effect.py (3x3)"
    from axolotl_maskthought.toy.tiny import build_tiny

    model = work / "gpt2_untrained"
    if not (model / "config.json").exists():
        build_tiny(
            model,
            generate_multiplication(3, 3, 500, seed=1),
            vocab_size=300,
            arch="gpt2",
            hidden=128,
            layers=3,
            heads=4,
            max_positions=256,
        )
    return model, data, "untrained tiny GPT-2 (runs to max_new_tokens)"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--count", type=int, default=256, help="test problems")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI runs")
    parser.add_argument("--quick", action="store_true", help="64 problems, 1 repeat, no CLI runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.repeats, args.no_cli = 64, 1, True
    import torch

    from axolotl_maskthought.data.formats import parse_icot_line
    from axolotl_maskthought.eval.evaluation import evaluate_model
    from axolotl_maskthought.eval.loading import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    work = WORK_DIR / "eval_throughput"
    work.mkdir(parents=True, exist_ok=True)
    note = machine_note()
    if args.model:
        model_dir, data, what = Path(args.model), Path(args.data), "given"
    else:
        model_dir, data, what = default_model_and_data(work, args.count)
    lines = [line for line in data.read_text().splitlines() if line.strip()][: args.count]
    examples = [parse_icot_line(line) for line in lines]
    model, tokenizer = load_model_and_tokenizer(model_dir)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    evaluate_model(
        model, tokenizer, examples[:8], "icot", batch_size=8, max_new_tokens=args.max_new_tokens, progress=False
    )  # warm-up
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    accuracy: dict[int, float] = {}
    for round_index in range(args.repeats):
        order = sizes if round_index % 2 == 0 else list(reversed(sizes))
        for size in order:
            out = evaluate_model(
                model, tokenizer, examples, "icot", batch_size=size, max_new_tokens=args.max_new_tokens, progress=False
            )
            rates[size].append(out["examples_per_second"])
            accuracy[size] = out["accuracy"]
            print(
                f"round {round_index} batch {size:3d}: {out['examples_per_second']:.1f} ex/s, "
                f"accuracy {out['accuracy']:.3f}",
                flush=True,
            )
    base = sizes[0]
    result = {
        "command": command_line(),
        "machine": note,
        "model": str(model_dir),
        "model_note": what,
        "data": str(data),
        "examples": len(examples),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "examples_per_second": {size: spread(values) for size, values in rates.items()},
        "ratio_to_batch_1": {size: spread([v / b for v, b in zip(rates[size], rates[base])]) for size in sizes},
        "accuracy_by_batch_size": accuracy,
        "cli": {},
    }
    if not args.no_cli:
        env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(args.threads)}
        for size in sizes:
            command = [
                sys.executable,
                "-m",
                "axolotl_maskthought",
                "eval",
                str(model_dir),
                "--data",
                str(data),
                "--batch-size",
                str(size),
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--limit",
                str(args.count),
                "--no-progress",
            ]
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(REPO_ROOT))
            result["cli"][size] = {
                "command": " ".join(["python", *command[1:]]),
                "returncode": done.returncode,
                "wall_seconds": round(time.perf_counter() - started, 1),
                "stdout_tail": done.stdout[-400:],
                "stderr_tail": done.stderr[-400:],
            }
            print(f"CLI batch {size}: {result['cli'][size]['wall_seconds']} s wall, rc {done.returncode}", flush=True)
    save_json(work / "eval_throughput_result.json", result)
    print(f"\n{result['command']}\n{note}\nmodel: {what}")
    for size in sizes:
        s, r = result["examples_per_second"][size], result["ratio_to_batch_1"][size]
        print(
            f"batch {size:3d}: {s['median']:.1f} ex/s [{s['min']:.1f}, {s['max']:.1f}]  "
            f"ratio {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]  accuracy {accuracy[size]:.3f}"
        )
    return result


if __name__ == "__main__":
    main()
