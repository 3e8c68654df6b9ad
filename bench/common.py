"""Shared helpers for the benchmark scripts (not tests).

Paths, the offline environment, tiny models, axolotl configs, isolated training
runs (one subprocess each, for a clean ``ru_maxrss``) and summary statistics.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from axolotl_maskthought.data.files import read_jsonl  # noqa: F401  (re-exported for the scripts)
from axolotl_maskthought.toy.tiny import OFFLINE_ENV, cpu_config

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SHARED_DATA = Path(os.environ.get("MASKTHOUGHT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
WORK_DIR = Path(os.environ.get("MASKTHOUGHT_BENCH_DIR", "/tmp/maskthought-bench"))

os.environ.update({k: v for k, v in OFFLINE_ENV.items() if k not in os.environ})


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        raise SystemExit(f"shared data not found: {path} (set MASKTHOUGHT_SHARED_DATA)")
    return path


def write_yaml(path: Path, config: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def base_config(model_dir: Path, dataset: dict, output_dir: Path, **overrides) -> dict:
    """A CPU-safe axolotl config, plugin off unless ``overrides`` list it; ``overrides`` win."""
    defaults = dict(
        plugins=None,
        dataset_prepared_path=None,
        sequence_len=256,
        micro_batch_size=8,
        logging_steps=5,
        seed=0,
        dataset_num_proc=None,
    )
    return cpu_config(model_dir, [dataset], output_dir, **{**defaults, **overrides})


def run_training(
    config_path: Path,
    result_path: Path,
    log_path: Path,
    timeout: float = 3600,
    env: dict | None = None,
    threads: int | None = None,
) -> dict:
    """Train ``config_path`` in a fresh process (bench/train_worker.py); returns its JSON result.
    ``threads``: torch (OpenMP/MKL) threads of that process."""
    command = [sys.executable, str(BENCH_DIR / "train_worker.py"), str(config_path), str(result_path)]
    thread_env = {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env = {
        **os.environ,
        **OFFLINE_ENV,
        **thread_env,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
    }
    result_path.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.run(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=str(REPO_ROOT)
        )
    if process.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"training failed ({process.returncode}): {shlex.join(command)}\n{tail}")
    result = json.loads(result_path.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


def summary(values: list[float]) -> dict:
    """Median, min, max and the relative spread ((max - min) / median)."""
    values = sorted(values)
    median = statistics.median(values)
    return {
        "median": median,
        "min": values[0],
        "max": values[-1],
        "spread": (values[-1] - values[0]) / median if median else float("nan"),
        "n": len(values),
    }


def machine_note() -> str:
    import torch

    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} at start"
    )


def command_line() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])


def save_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
