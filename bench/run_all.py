"""Run every benchmark in turn: ``python bench/run_all.py [--quick] [--only NAME,...]``.

tokenization → overhead → effect → gsm8k_probe → eval_throughput (eval last: it
uses the model the effect benchmark trains). ``--quick`` (about 5 minutes on 2 shared cores) only
checks that each script runs end to end; its figures are not the recorded ones.
Results: JSON files under $MASKTHOUGHT_BENCH_DIR (default /tmp/maskthought-bench);
the recorded figures and their command lines are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ORDER = ("tokenization", "overhead", "effect", "gsm8k_probe", "eval_throughput")
# One or more invocations per script: the commands recorded in bench/RESULTS.md.
EFFECT_3X3 = ["--digits", "3", "--train-count", "8000", "--test-count", "500", "--hidden", "128", "--layers", "3"]
FULL_ARGS = {
    "tokenization": [["--repeats", "5"]],
    "overhead": [
        ["--repeats", "0", "--cycle-repeats", "3", "--steps", "40", "--warmup", "2", "--rows", "400"],
        ["--repeats", "3", "--cycle-repeats", "0", "--steps", "12", "--warmup", "2", "--rows", "400", "--no-micro"],
        [
            "--repeats",
            "0",
            "--cycle-repeats",
            "3",
            "--steps",
            "40",
            "--warmup",
            "2",
            "--rows",
            "400",
            "--packing",
            "--no-micro",
        ],
        [
            "--repeats",
            "5",
            "--cycle-repeats",
            "0",
            "--steps",
            "20",
            "--warmup",
            "2",
            "--rows",
            "400",
            "--no-micro",
            "--configs",
            "off,masked_thought",
        ],
    ],
    "effect": [
        [
            *EFFECT_3X3,
            "--epochs",
            "5",
            "--start-epoch",
            "2",
            "--tokens-per-epoch",
            "12",
            "--methods",
            "no_cot,cot,si,mft,mft_0.1",
            "--seeds",
            "0,1,2",
        ],
        [
            *EFFECT_3X3,
            "--tag",
            "_long",
            "--epochs",
            "24",
            "--start-epoch",
            "4",
            "--tokens-per-epoch",
            "1.5",
            "--methods",
            "no_cot,si",
            "--seeds",
            "0,1",
        ],
        # 4x4 probe: can explicit CoT learn it at this size within ~20 minutes?
        [
            "--digits",
            "4",
            "--train-count",
            "16000",
            "--test-count",
            "500",
            "--epochs",
            "3",
            "--hidden",
            "128",
            "--layers",
            "3",
            "--methods",
            "cot",
            "--seeds",
            "0",
            "--jobs",
            "1",
        ],
    ],
    "gsm8k_probe": [["--epochs", "1", "--test-count", "200"]],
    "eval_throughput": [["--count", "256", "--repeats", "3"]],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(ORDER))
    args = parser.parse_args()
    failures = []
    for name in ORDER:
        if name not in args.only.split(","):
            continue
        for script_args in [["--quick"]] if args.quick else FULL_ARGS[name]:
            command = [sys.executable, str(BENCH_DIR / f"{name}.py"), *script_args]
            print(f"\n=== {' '.join(command)}", flush=True)
            started = time.perf_counter()
            code = subprocess.run(command, cwd=str(BENCH_DIR.parent)).returncode
            print(f"=== {name}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
            if code:
                failures.append(name)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
