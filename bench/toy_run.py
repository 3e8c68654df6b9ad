"""What ``bench/si_2x2.py`` and ``bench/mft_recovery.py`` share: one training run of the quickstart's
runner (:mod:`axolotl_maskthought.toy.experiment`) on NxN multiplication, recorded as one JSON whatever
happens (a failure too, with its traceback).

The data of a size (``--a-digits``, ``--b-digits``, ``--train-rows``, ``--test-rows``, ``--val-rows``)
is written once under ``--work``/data; each seed gets its own tiny GPT-2 there (the same tokenizer,
trained on the same training texts; initial weights drawn with the seed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

from axolotl_maskthought.toy.tiny import OFFLINE_ENV


def start(threads: int) -> None:
    """The offline environment (no hub, no tracker) and one torch thread per run unless told."""
    for key, value in {**OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(threads)


def data_dir(args) -> Path:
    """Where the problems of ``args``' size are written (once, for every run of that size)."""
    size = f"{args.a_digits}x{args.b_digits}_train{args.train_rows}_test{args.test_rows}_val{args.val_rows}"
    return Path(args.work) / "data" / f"{size}_distinct"


def prepare_data_and_model(args, sizes, say) -> tuple[Path, Path]:
    """``toy.experiment.prepare`` writes the data files once (train_cot / train_no_cot / valid / test);
    the seed's model (``args.hidden``, ``layers``, ``heads``) is built next to them if missing.
    Returns (data folder, model folder)."""
    from axolotl_maskthought.toy import experiment

    directory = data_dir(args)
    marker = directory / "DONE"
    if not marker.exists():
        directory.mkdir(parents=True, exist_ok=True)
        experiment.prepare(directory, sizes)
        shutil.rmtree(directory / "prepared", ignore_errors=True)
        marker.write_text("ok")
    model_dir = directory / f"model_h{args.hidden}_l{args.layers}_n{args.heads}_s{args.seed}"
    if not (model_dir / "config.json").exists():
        train = (directory / "train_cot.txt").read_text(encoding="utf-8").splitlines()
        experiment.build_model(model_dir, train, sizes, seed=args.seed)
        say(f"built {model_dir}")
    return directory, model_dir


def new_record(name: str, args, **fields) -> dict:
    """A run's record as written when it starts (status ``running``)."""
    return {
        "name": name,
        **fields,
        "args": vars(args),
        "host": socket.gethostname(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": "running",
    }


def sayer(name: str):
    """A progress printer: ``[HH:MM:SS] NAME: text``, flushed."""
    return lambda text: print(f"[{time.strftime('%H:%M:%S')}] {name}: {text}", flush=True)


@contextlib.contextmanager
def recorded(record: dict, out_path: Path, say):
    """Write ``record`` now and again when the block ends, with its wall and CPU seconds, the load
    average and the finish time; an exception marks it ``failed`` (error and traceback kept) and
    is raised again."""
    out_path.write_text(json.dumps(record, indent=1))
    wall0 = time.perf_counter()
    try:
        yield
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
        say(f"FAILED: {record['error']}")
        raise
    finally:
        record["wall_s"] = round(time.perf_counter() - wall0, 1)
        record["cpu_s"] = round(time.process_time(), 1)
        record["loadavg_end"] = os.getloadavg()
        record["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out_path.write_text(json.dumps(record, indent=1, default=str))


def train_timed(config_path: Path, first_step: int = 0):
    """Train as ``axolotl train CONFIG`` does (``toy.experiment.train_in_process``); returns the model,
    tokenizer, trainer and the run's figures: ``steps`` (the last step), ``train_runtime_s`` (the
    trainer's), ``train_call_wall_s``, ``steps_per_second``, ``train_call_cpu_s`` (this process's CPU
    time: the time on an idle core), ``steps_per_cpu_second``, ``parameters``. ``first_step``: the
    step a resumed run starts from; the rates count the steps of this call only."""
    from axolotl_maskthought.toy import experiment

    t0, c0 = time.perf_counter(), time.process_time()
    model, tokenizer, trainer = experiment.train_in_process(config_path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    runtime = next((e["train_runtime"] for e in trainer.state.log_history if "train_runtime" in e), wall)
    steps = trainer.state.global_step
    trained = steps - first_step
    figures = {
        "steps": steps,
        "train_runtime_s": round(runtime, 1),
        "train_call_wall_s": round(wall, 1),
        "steps_per_second": round(trained / runtime, 2) if runtime else None,
        "train_call_cpu_s": round(cpu, 1),
        "steps_per_cpu_second": round(trained / cpu, 2) if cpu else None,
        "parameters": model.num_parameters(),
    }
    return model, tokenizer, trainer, figures


def last_checkpoint(out: Path) -> Path | None:
    """The latest ``checkpoint-N`` folder under a run's ``output_dir`` (transformers' own lookup), or None."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(out)) if Path(out).is_dir() else None
    return Path(found) if found else None


def resumed_step(record: dict) -> int:
    """The step a run's last call started from: its ``resumed_from`` checkpoint's N, or 0."""
    return int(Path(record["resumed_from"]).name.split("-")[1]) if record.get("resumed_from") else 0


def sizes_from(args, **fields):
    """``toy.experiment.Sizes`` from the shared command-line arguments; ``fields`` add or override."""
    from axolotl_maskthought.toy import experiment

    shared = dict(
        a_digits=args.a_digits,
        b_digits=args.b_digits,
        train_rows=args.train_rows,
        test_rows=args.test_rows,
        epochs=args.epochs,
        micro_batch_size=args.batch,
        learning_rate=args.lr,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        val_rows=args.val_rows,
    )
    return experiment.Sizes(**{**shared, **fields})
