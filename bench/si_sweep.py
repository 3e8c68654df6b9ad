"""Stepwise Internalization on multiplication: a sweep of recipes, through the plain-Trainer engine.

Each configuration trains a small model from scratch on generated multiplication
(official ICoT format) with ``MaskThoughtTrainer`` from
``axolotl_maskthought.adapters.transformers`` (the same engine axolotl's trainer
uses), and scores greedy answers with NO CoT on held-out problems with the package's
``evaluate_model`` (a validation draw: other operands than the training set, never the
official test files).
The no-CoT baseline trains the same model on ``q eos eos #### answer eos`` rows.

It needs torch, transformers and pydantic only, so it also runs on a GPU machine
without axolotl: ``python bench/si_sweep.py --grid gpu --jobs 12 --out DIR``.
``--grid smoke`` is a CPU check of the whole path in a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASE = dict(
    digits=3,
    train_rows=20000,
    valid_rows=300,
    arch="gpt2",
    layers=2,
    heads=4,
    hidden=128,
    batch=32,
    lr=5e-4,
    steps=12000,
    steps_per_token=300,
    warmup_steps=1500,
    reset=True,
    smoothing=4.0,
    keep_position=False,
    remove_all_at=None,
    no_cot=False,
    tokenizer="word",
    evals=8,
    seed=0,
    max_seconds=None,
)

GRIDS = {
    "smoke": [
        dict(
            name="smoke",
            train_rows=200,
            valid_rows=20,
            hidden=32,
            steps=40,
            steps_per_token=3,
            warmup_steps=10,
            evals=2,
        ),
        dict(name="smoke-nocot", train_rows=200, valid_rows=20, hidden=32, steps=40, no_cot=True, evals=2),
    ],
    # ~4 minutes each, 12 at once on one H200 (16 CPU cores): 2-layer GPT-2, 3x3, 24 CoT tokens.
    "gpu": [
        dict(name="si-300"),
        dict(name="si-300-keep", keep_position=True),
        dict(name="si-150", steps_per_token=150),
        dict(name="si-400", steps_per_token=400),
        dict(name="si-300-noreset", reset=False),
        dict(name="si-300-lr1e-3", lr=1e-3),
        dict(name="si-300-nosmooth", smoothing=None),
        dict(name="si-300-4l", layers=4),
        dict(name="si-300-llama", arch="llama"),
        dict(name="si-300-bpe", tokenizer="bpe", steps_per_token=150),
        dict(name="nocot", no_cot=True),
        dict(name="nocot-4l", no_cot=True, layers=4),
    ],
    # Second GPU round: faster removal (the first round reached 9-19 of 24 tokens in 150 s).
    "gpu2": [
        dict(steps_per_token=150, name="si-150"),
        dict(steps_per_token=150, name="si-150-s1", seed=1),
        dict(name="si-100", steps_per_token=100),
        dict(name="si-60", steps_per_token=60),
        dict(steps_per_token=150, name="si-150-keep", keep_position=True),
        dict(steps_per_token=150, name="si-150-noreset", reset=False),
        dict(steps_per_token=150, name="si-150-lr1e-3", lr=1e-3),
        dict(steps_per_token=150, name="si-150-llama", arch="llama"),
        dict(steps_per_token=150, name="si-150-4l", layers=4),
        dict(steps_per_token=150, name="si-150-nosmooth", smoothing=None),
        dict(steps_per_token=150, name="nocot", no_cot=True),
        dict(steps_per_token=150, name="nocot-s1", no_cot=True, seed=1),
    ],
}


def word_tokenizer():
    """One token per digit and sign: the 17-token word-level vocabulary of the official runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + [str(d) for d in range(10)] + ["*", "+", "(", ")", "####"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def make_data(config):
    from axolotl_maskthought.data.generators import generate_multiplication

    digits = config["digits"]
    train = list(
        dict.fromkeys(generate_multiplication(digits, digits, config["train_rows"] * 2, seed=1000 + config["seed"]))
    )
    train = train[: config["train_rows"]]
    seen = set(train)
    valid = [
        line
        for line in dict.fromkeys(generate_multiplication(digits, digits, config["valid_rows"] * 3, seed=77))
        if line not in seen
    ][: config["valid_rows"]]
    return train, valid


def build(config):
    from axolotl_maskthought.data.formats import CoTExample, parse_icot_line, tokenize_icot
    from axolotl_maskthought.toy.tiny import build_model, build_tokenizer

    train, valid = make_data(config)
    tokenizer = word_tokenizer() if config["tokenizer"] == "word" else build_tokenizer(train[:2000], 256, add_bos=False)
    examples = [parse_icot_line(line) for line in train]
    if config["no_cot"]:
        examples = [CoTExample(e.question, "", e.answer) for e in examples]
    rows = [tokenize_icot(tokenizer, e) for e in examples]
    model = build_model(
        tokenizer,
        config["arch"],
        hidden=config["hidden"],
        layers=config["layers"],
        heads=config["heads"],
        max_positions=256,
        seed=config["seed"],
    )
    return tokenizer, rows, [parse_icot_line(line) for line in valid], model


def run_one(config) -> dict:
    import torch
    from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments

    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer
    from axolotl_maskthought.eval.evaluation import evaluate_model

    torch.manual_seed(config["seed"])
    start = time.time()
    tokenizer, rows, valid, model = build(config)
    micro_batches = -(-len(rows) // config["batch"])
    removal = None
    if not config["no_cot"]:
        removal = dict(
            tokens_per_epoch=micro_batches / config["steps_per_token"],
            smoothing_lambda=config["smoothing"],
            reset_optimizer=config["reset"],
            keep_position=config["keep_position"],
            remove_all_at=config["remove_all_at"],
        )
    curve = []
    cot_len_full = cot_tokens(tokenizer, config)
    answer_tokens = max(len(tokenizer(f" #### {e.answer}", add_special_tokens=False)["input_ids"]) for e in valid)

    class Curve(TrainerCallback):
        """No-CoT accuracy every steps/evals steps, scored by the package's ``evaluate_model`` (what
        ``axolotl-maskthought eval --no-cot [--keep-position]`` runs); stops at `max_seconds` (then
        scores once more)."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            out_of_time = config["max_seconds"] is not None and time.time() - start > config["max_seconds"]
            if state.global_step % max(1, config["steps"] // config["evals"]) == 0 or out_of_time:
                scored = evaluate_model(
                    model,
                    tokenizer,
                    valid,
                    "icot",
                    no_cot=True,
                    batch_size=256,
                    max_new_tokens=answer_tokens + 2,
                    progress=False,
                    keep_position=config["keep_position"],
                )
                curve.append((state.global_step, scored["accuracy"]))
            control.should_training_stop = control.should_training_stop or out_of_time

    args = TrainingArguments(
        output_dir=f"/tmp/si_sweep/{config['name']}",
        per_device_train_batch_size=config["batch"],
        max_steps=config["steps"],
        learning_rate=config["lr"],
        lr_scheduler_type="constant",
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=200,
        save_strategy="no",
        report_to=[],
        seed=config["seed"],
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    if removal is not None:  # full-CoT warm-up in whole epochs (the official `pretrain_epochs`)
        removal["start_epoch"] = config["warmup_steps"] // micro_batches
    trainer = MaskThoughtTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=[Curve()],
        cot_removal=removal,
    )
    trainer.train()
    counts = trainer.applied_counts
    return dict(
        config=config,
        curve=curve,
        steps_done=trainer.state.global_step,
        final=curve[-1][1] if curve else None,
        cot_tokens=cot_len_full,
        final_count=counts[max(counts)] if counts else 0,
        micro_batches_per_epoch=micro_batches,
        seconds=round(time.time() - start, 1),
        device=str(args.device),
    )


def cot_tokens(tokenizer, config) -> int:
    """CoT length in tokens of a multiplication of this size (constant for the word tokenizer)."""
    from axolotl_maskthought.data.formats import parse_icot_line, tokenize_icot
    from axolotl_maskthought.data.generators import generate_multiplication

    line = generate_multiplication(config["digits"], config["digits"], 1, seed=5)[0]
    return sum(tokenize_icot(tokenizer, parse_icot_line(line))["cot_mask"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="smoke")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("si_sweep_out"))
    parser.add_argument("--max-seconds", type=float, help="stop each run's training after this wall time")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        config = json.loads(args.one)
        result = run_one(config)
        (args.out / f"{config['name']}.json").write_text(json.dumps(result, indent=1))
        print(
            config["name"],
            "final",
            result["final"],
            "count",
            result["final_count"],
            "of",
            result["cot_tokens"],
            f"{result['seconds']}s",
            flush=True,
        )
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    configs = [{**BASE, **entry} for entry in GRIDS[args.grid]]
    if args.max_seconds is not None:
        configs = [{**config, "max_seconds": args.max_seconds} for config in configs]
    running: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for config in configs:
        while len(running) >= args.jobs:
            running = [p for p in running if p.poll() is None]
            time.sleep(0.5)
        log = open(args.out / f"{config['name']}.log", "w")
        running.append(
            subprocess.Popen(
                [sys.executable, __file__, "--out", str(args.out), "--one", json.dumps(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
    for process in running:
        process.wait()
    rows = []
    for config in configs:
        path = args.out / f"{config['name']}.json"
        result = json.loads(path.read_text()) if path.exists() else None
        rows.append(
            f"| {config['name']} | {result and result['final']} | {result and result['curve']} | "
            f"{result and result['final_count']}/{result and result['cot_tokens']} | {result and result['steps_done']} | "
            f"{result and result['seconds']} |"
        )
    summary = (
        "| config | no-CoT exact (valid) | curve (step, acc) | count/CoT | steps | s |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
