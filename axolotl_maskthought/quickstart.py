"""``axolotl-maskthought quickstart``: did it help? Three small runs on your CPU.

Builds a tiny GPT-2 and a tokenizer on the spot, generates multiplication
problems in the ICoT format, fine-tunes three times through axolotl with this
plugin, and evaluates on held-out problems:

* Stepwise Internalization (``cot_removal``), evaluated without CoT;
* a plain no-CoT baseline (same data with the CoT stripped, same steps),
  evaluated without CoT;
* Masked Thought (``masked_thought``) with CoT, evaluated with CoT.

Prints a table (method, accuracy, n, train time), writes ``results.json`` and
``quickstart.png`` (loss, CoT tokens removed and answer accuracy over training)
plus every config it trained with. Nothing is downloaded and nothing outside
``--output`` is read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from .tiny import OFFLINE_ENV


@dataclass(frozen=True)
class Sizes:
    """Everything that makes a run longer or shorter."""

    a_digits: int
    b_digits: int
    train_rows: int
    test_rows: int
    epochs: int
    micro_batch_size: int
    learning_rate: float
    arch: str  # tiny.build_model: llama (rotary positions) or gpt2 (learned absolute positions)
    hidden: int
    layers: int
    heads: int
    tokens_per_epoch: float  # Δ of Stepwise Internalization
    start_epoch: int  # full-CoT epochs before removal starts
    eval_steps: int
    eval_accuracy_samples: int


# Full mode: 1,000 optimizer steps per method (about 5 minutes on 2 free cores). 2x2 is the
# smallest multiplication whose CoT (two partial products) is more than the answer itself.
FULL = Sizes(a_digits=2, b_digits=2, train_rows=4000, test_rows=200, epochs=8, micro_batch_size=32,
             learning_rate=1e-3, arch="gpt2", hidden=128, layers=2, heads=4, tokens_per_epoch=3, start_epoch=4,
             eval_steps=125, eval_accuracy_samples=64)
QUICK = Sizes(a_digits=2, b_digits=2, train_rows=256, test_rows=32, epochs=2, micro_batch_size=16,
              learning_rate=1e-3, arch="gpt2", hidden=32, layers=1, heads=2, tokens_per_epoch=8, start_epoch=0,
              eval_steps=16, eval_accuracy_samples=16)


@dataclass(frozen=True)
class Method:
    name: str
    train_file: str  # with or without the CoT
    no_cot_eval: bool
    blocks: dict


def methods(sizes: Sizes) -> list[Method]:
    return [
        Method("stepwise_internalization", "train_cot.txt", True, {
            "cot_removal": {"tokens_per_epoch": sizes.tokens_per_epoch, "start_epoch": sizes.start_epoch,
                            "smoothing_lambda": 4, "side": "left", "reset_optimizer": True},
        }),
        Method("no_cot_baseline", "train_no_cot.txt", True, {}),
        Method("masked_thought", "train_cot.txt", False, {
            "masked_thought": {"ratio": 0.4, "replacement": "random", "warmup": 0.66},
        }),
    ]


# ---- data and model ------------------------------------------------------------------
def strip_cot(line: str) -> str:
    """``q||cot #### a`` -> ``q|| #### a`` (the icot strategy then trains ``q eos eos #### a eos``)."""
    question, solution = line.split("||", 1)
    return f"{question}|| #### {solution.split('####', 1)[1].strip()}"


def prepare(output: Path, sizes: Sizes, seed: int = 0) -> Path:
    """Write train (with and without CoT) and held-out test files and a tiny model; return the model dir."""
    from . import data, tiny

    train = data.generate_multiplication(sizes.a_digits, sizes.b_digits, sizes.train_rows, seed)
    seen = {line.split("||", 1)[0] for line in train}
    test = [line for line in data.generate_multiplication(sizes.a_digits, sizes.b_digits, sizes.test_rows * 4, seed + 1)
            if line.split("||", 1)[0] not in seen]
    test = list(dict.fromkeys(test))[: sizes.test_rows]
    data.write_lines(output / "train_cot.txt", train)
    data.write_lines(output / "train_no_cot.txt", [strip_cot(line) for line in train])
    data.write_lines(output / "test.txt", test)
    model_dir = output / "model"
    tiny.build_tiny(model_dir, train, vocab_size=300, arch=sizes.arch, hidden=sizes.hidden, layers=sizes.layers,
                    heads=sizes.heads, max_positions=128, seed=seed)
    return model_dir


def config_for(method: Method, sizes: Sizes, output: Path, model_dir: Path) -> dict:
    return {
        "base_model": str(model_dir),
        "plugins": ["axolotl_maskthought.MaskThoughtPlugin"],
        **method.blocks,
        "cot_format": {"eval_accuracy_samples": sizes.eval_accuracy_samples},
        "datasets": [{"path": str(output / method.train_file), "type": "axolotl_maskthought.strategies.icot"}],
        "test_datasets": [{"path": str(output / "test.txt"), "type": "axolotl_maskthought.strategies.icot",
                           "split": "train"}],
        "dataset_prepared_path": str(output / "prepared"),
        "sequence_len": 128,
        "micro_batch_size": sizes.micro_batch_size,
        "eval_batch_size": 64,
        "gradient_accumulation_steps": 1,
        "num_epochs": sizes.epochs,
        "learning_rate": sizes.learning_rate,
        "optimizer": "adamw_torch",
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "lr_scheduler": "constant",
        "bf16": False,
        "fp16": False,
        "seed": 42,
        "output_dir": str(output / "runs" / method.name),
        "save_strategy": "no",
        "eval_strategy": "steps",
        "eval_steps": sizes.eval_steps,
        "logging_steps": 10,
        "dataloader_num_workers": 0,
        "dataset_num_proc": 1,
        "special_tokens": {"pad_token": "<pad>"},
    }


# ---- training and evaluation ------------------------------------------------------------
def train_in_process(config_path: Path):
    """What ``axolotl train CONFIG`` does, in this process; returns (model, tokenizer, trainer)."""
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import train

    cfg = load_cfg(str(config_path))
    dataset_meta = load_datasets(cfg=cfg, cli_args=TrainerCliArgs())
    return train(cfg=cfg, dataset_meta=dataset_meta)


def held_out_examples(output: Path):
    from .formats import parse_icot_line

    return [parse_icot_line(line) for line in (output / "test.txt").read_text(encoding="utf-8").splitlines() if line]


def run(output: Path, sizes: Sizes, verbose: bool = False) -> dict:
    import yaml

    from .callbacks import METRIC_COT, METRIC_NO_COT, answer_accuracy

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    output.mkdir(parents=True, exist_ok=True)
    # axolotl keys prepared data by file path, not content: never reuse an earlier run's.
    shutil.rmtree(output / "prepared", ignore_errors=True)
    started = time.perf_counter()
    log_path = output / "train.log"
    with _captured_output(log_path, verbose):
        model_dir = prepare(output, sizes)
    examples = held_out_examples(output)
    print(f"data: {sizes.train_rows} training problems {sizes.a_digits}x{sizes.b_digits}, {len(examples)} held out; "
          f"model: {sizes.arch} {sizes.layers} layers x {sizes.hidden} ({model_dir})", flush=True)
    results = []
    for method in methods(sizes):
        config_path = output / f"{method.name}.yml"
        config_path.write_text(yaml.safe_dump(config_for(method, sizes, output, model_dir), sort_keys=False))
        print(f"[{method.name}] training, as `axolotl train {config_path}` would (in this process; "
              f"log: {log_path})", flush=True)
        run_started = time.perf_counter()
        with _captured_output(log_path, verbose):
            model, tokenizer, trainer = train_in_process(config_path)
        run_seconds = time.perf_counter() - run_started
        history = trainer.state.log_history
        # the training loop alone (with its evaluations), as the HF Trainer measured it
        train_seconds = next((entry["train_runtime"] for entry in history if "train_runtime" in entry), run_seconds)
        accuracy = answer_accuracy(model, tokenizer, examples, "icot", None, method.no_cot_eval, 64,
                                   _max_new_tokens(tokenizer, examples))
        results.append({
            "method": method.name,
            "eval": "no CoT" if method.no_cot_eval else "with CoT",
            "accuracy": accuracy,
            "n": len(examples),
            "train_seconds": round(train_seconds, 1),
            "run_seconds": round(run_seconds, 1),  # + loading data and model, saving
            "steps": trainer.state.global_step,
            "config": str(config_path),
            "history": {
                "loss": _series(history, "loss"),
                "removed_tokens_mean": _series(history, "cot_removal/removed_tokens_mean"),
                # the evaluation mode's accuracy, and the other mode's (SI: the CoT it is losing)
                "accuracy": _series(history, METRIC_NO_COT if method.no_cot_eval else METRIC_COT),
                "accuracy_other": _series(history, METRIC_COT if method.no_cot_eval else METRIC_NO_COT),
            },
        })
        print(f"[{method.name}] {trainer.state.global_step} steps, training {train_seconds:.0f}s "
              f"(run {run_seconds:.0f}s), accuracy {accuracy:.3f}", flush=True)
        del model, trainer
    summary = {
        "task": f"{sizes.a_digits}x{sizes.b_digits} multiplication (ICoT format)",
        "sizes": sizes.__dict__,
        "results": results,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    plot(results, output / "quickstart.png")
    return summary


def _max_new_tokens(tokenizer, examples) -> int:
    return 8 + max(len(tokenizer(f" {e.cot} #### {e.answer}")["input_ids"]) for e in examples)


def _series(history: list[dict], key: str) -> list[list[float]]:
    return [[entry["step"], entry[key]] for entry in history if key in entry]


@contextmanager
def _captured_output(log_path: Path, verbose: bool):
    """Send axolotl's log lines, warnings and progress bars to ``log_path`` (unless verbose)."""
    if verbose:
        yield
        return
    import logging

    def handlers():
        found = {}
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", []):
                # StreamHandlers with a settable stream (not files, not logging's last resort)
                if type(handler) is logging.StreamHandler or (
                    isinstance(handler, logging.StreamHandler) and hasattr(handler, "terminator")
                    and not isinstance(handler, logging.FileHandler) and "stream" in vars(handler)
                ):
                    found[id(handler)] = handler
        return list(found.values())

    def point(handler, stream):
        with handler.lock:
            previous, handler.stream = handler.stream, stream  # no flush: the old stream may be closed
        return previous

    terminal = {id(sys.stdout), id(sys.stderr), id(sys.__stdout__), id(sys.__stderr__)}
    with open(log_path, "a", encoding="utf-8") as handle:
        moved = [(handler, point(handler, handle)) for handler in handlers() if id(handler.stream) in terminal]
        try:
            with redirect_stdout(handle), redirect_stderr(handle):
                yield
        finally:
            for handler in handlers():  # created during the run, pointing at the log file
                if handler.stream is handle:
                    point(handler, sys.stderr)
            for handler, stream in moved:
                point(handler, stream)


# ---- report -----------------------------------------------------------------------------
def format_table(results: list[dict]) -> str:
    rows = [("method", "eval", "accuracy", "n", "train time")]
    rows += [(r["method"], r["eval"], f"{r['accuracy']:.3f}", str(r["n"]), f"{r['train_seconds']:.0f}s")
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4), sharex=True)
    panels = (("loss", "training loss"), ("removed_tokens_mean", "CoT tokens removed (mean per example)"),
              ("accuracy", "held-out answer accuracy (eval set sample)"))
    colors = {result["method"]: f"C{index}" for index, result in enumerate(results)}
    for axis, (key, title) in zip(axes, panels):
        for result in results:
            points = result["history"][key]
            if points:
                steps, values = zip(*points)
                label = result["method"] + (f" ({result['eval']})" if key == "accuracy" else "")
                axis.plot(steps, values, marker="." if key == "accuracy" else None, label=label,
                          color=colors[result["method"]])
            other = result["history"].get("accuracy_other") if key == "accuracy" else None
            if other and result["method"] == "stepwise_internalization":
                steps, values = zip(*other)
                axis.plot(steps, values, linestyle="--", color=colors[result["method"]],
                          label=f"{result['method']} (with CoT)")
        axis.set_title(title)
        axis.set_xlabel("optimizer step")
        if key == "accuracy":
            axis.set_ylim(-0.02, 1.02)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---- command ------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    output = Path(args.output)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    summary = run(output, sizes, verbose=args.verbose)
    print()
    print(f"{summary['task']}, held-out problems, greedy decoding:")
    print(format_table(summary["results"]))
    print(f"\nplot: {output / 'quickstart.png'}   summary: {output / 'results.json'}   "
          f"total {summary['total_seconds']:.0f}s")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train tiny models three ways (SI, no-CoT baseline, Masked Thought) and compare",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--output", default="maskthought-quickstart", help="directory for data, model, configs, plot")
    parser.add_argument("--quick", action="store_true", help="a much smaller run (CI smoke test, < 90 s)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is much faster on a busy machine)")
    parser.add_argument("--verbose", action="store_true", help="show axolotl's own log output")
    parser.set_defaults(func=command)

