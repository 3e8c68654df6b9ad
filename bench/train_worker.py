"""One axolotl training run in this process: ``python bench/train_worker.py CONFIG RESULT.json``.

Runs ``axolotl_maskthought.toy.experiment.train_in_process`` (what ``axolotl train`` runs,
the package's one in-process runner) and writes the step timings (bench/steptimer.py, when listed in the config's
plugins) and this process's peak resident set size (``getrusage`` ``ru_maxrss``,
KiB on Linux) to RESULT.json.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def main() -> int:
    config, result_path = sys.argv[1], sys.argv[2]
    timer_path = result_path + ".steps"
    os.environ["STEPTIMER_OUT"] = timer_path
    started = time.perf_counter()
    from axolotl_maskthought.toy.experiment import train_in_process

    model, tokenizer, trainer = train_in_process(config)
    del model, tokenizer, trainer
    result = {"train_call_seconds": time.perf_counter() - started}
    if os.path.exists(timer_path):
        with open(timer_path) as handle:
            result.update(json.load(handle))
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(result_path, "w") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
