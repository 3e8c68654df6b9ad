#!/usr/bin/env python
"""Stepwise Internalization (ICoT-SI) vs no-CoT training on NxN multiplication, through the product.

One run = one arm (``si`` or ``nocot``) at one seed. It uses the package's own machinery
(axolotl_maskthought.toy.experiment, the quickstart's runner): ``prepare`` writes the training file (with and without CoT),
a validation file and a held-out test file (disjoint: no test/validation question is in
training) and a tiny GPT-2 with its byte-level BPE tokenizer; ``config_for`` writes the axolotl
YAML; ``train_in_process`` trains exactly as ``axolotl train CONFIG`` does; the package's
``eval.evaluation.evaluate_model`` scores validation and test problems with ``no_cot=True`` and
``keep_position`` as in training. One JSON per run (config, seed, steps, wall seconds,
accuracy with n/correct, per-step history) goes to --results.

Setting choices are made on the validation split (``val``); the test split (``test``) is
only reported.

Reproduce from a fresh clone (package importable, e.g. ``PYTHONPATH=<clone>``):

  OMP_NUM_THREADS=1 python bench/si_2x2.py --arm si    --seed 0 --tag full2x2
  OMP_NUM_THREADS=1 python bench/si_2x2.py --arm nocot --seed 0 --tag full2x2

The pace is given in optimizer steps per removed token (--steps-per-token P); the plugin's
``tokens_per_epoch`` is set to Δ = micro_batches_per_epoch / P (choose --train-rows a
multiple of --batch so that micro_batches_per_epoch = train_rows / batch exactly).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import toy_run


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", choices=["si", "nocot"], required=True)
    p.add_argument("--seed", type=int, default=0, help="training seed and the tiny model's initialisation seed")
    p.add_argument("--tag", required=True, help="experiment name (results file prefix, work dir)")
    p.add_argument("--a-digits", type=int, default=2)
    p.add_argument("--b-digits", type=int, default=2)
    p.add_argument("--train-rows", type=int, default=6400)
    p.add_argument("--test-rows", type=int, default=500)
    p.add_argument("--val-rows", type=int, default=200)
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--start-epoch", type=int, default=10, help="full-CoT epochs before removal")
    p.add_argument("--steps-per-token", type=float, default=500, help="P: optimizer steps per removed token")
    p.add_argument(
        "--pace",
        choices=["delta", "steps", "gate"],
        default="delta",
        help="delta: tokens_per_epoch = micro_batches_per_epoch / P with start_epoch (the paper's form); "
        "steps: cot_removal.steps_per_token P with start_step = start_epoch x micro_batches_per_epoch; "
        "gate: cot_removal.loss_gate (--gate-min/--gate-max/--gate-recovery) from that start_step",
    )
    p.add_argument("--gate-min", type=int, default=100, help="loss_gate.min_steps")
    p.add_argument("--gate-max", type=int, default=2000, help="loss_gate.max_steps")
    p.add_argument("--gate-recovery", type=float, default=0.8, help="loss_gate.recovery")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=200, help="linear LR warm-up, then constant (0: constant)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lam", type=float, default=4.0, help="smoothing_lambda")
    p.add_argument("--reset", type=int, default=1, help="reset_optimizer (1/0)")
    p.add_argument("--keep-position", type=int, default=1)
    p.add_argument("--eval-steps", type=int, default=0, help="in-training validation accuracy every N steps (0: none)")
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0: none)")
    p.add_argument(
        "--score-steps",
        default="",
        help="comma-separated steps whose checkpoints are also scored after training (each must be a multiple "
        "of --save-steps; checkpoints are then all kept); with a constant LR and a pace in steps a run "
        "stopped at step S is the same as this run at S",
    )
    p.add_argument(
        "--score-only",
        action="store_true",
        help="do not train: score the finished run's saved model (and --score-steps checkpoints) again, "
        "keeping the training figures of its failed record (for a run whose scoring failed)",
    )
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in the run's output_dir")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument(
        "--pad-longest",
        type=int,
        default=1,
        help="1: pad each batch to its longest row (pad_to_sequence_len: false); 0: axolotl's default "
        "(pad to a multiple of 64: 64 tokens for ~24-token rows)",
    )
    p.add_argument("--work", default="bench/work/si_2x2")
    p.add_argument("--results", default="bench/results/si_2x2")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def score(
    model, tokenizer, directory: Path, keep: bool, splits=(("val", "valid.txt"), ("test", "test.txt")), no_cot=True
):
    """Exact match of ``model`` on the validation and test files (no CoT unless ``no_cot`` is False),
    through the package's eval."""
    from axolotl_maskthought.toy import experiment as quickstart

    scores = {}
    for split, fname in splits:
        t1 = time.perf_counter()
        scored = quickstart.score_examples(
            model, tokenizer, quickstart.held_out_examples(directory / fname), no_cot, keep
        )
        scores[split] = {
            "accuracy": scored["accuracy"],
            "correct": scored["correct"],
            "n": scored["n"],
            "no_answer": scored.get("no_answer"),
            "eval_seconds": round(time.perf_counter() - t1, 1),
            "no_cot": no_cot,
            "keep_position": keep,
            "sample_predictions": scored["predictions"][:3],
        }
    return scores


def main():
    args = parse()
    toy_run.start(args.threads)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    mbpe = math.ceil(args.train_rows / args.batch)
    delta = mbpe / args.steps_per_token
    name = f"{args.tag}_{args.arm}_seed{args.seed}"
    out_path = results / f"{name}.json"
    record = toy_run.new_record(
        name, args, arm=args.arm, seed=args.seed, micro_batches_per_epoch_expected=mbpe, tokens_per_epoch=delta
    )
    say = toy_run.sayer(name)
    failed_path = results / f"{name}.failed.json"
    if args.score_only and not failed_path.exists():
        out_path.rename(failed_path)
    with toy_run.recorded(record, out_path, say):
        import yaml

        from axolotl_maskthought.toy import experiment as quickstart

        sizes = toy_run.sizes_from(args, eval_steps=max(args.eval_steps, 1), eval_accuracy_samples=args.eval_samples)
        directory, model_dir = toy_run.prepare_data_and_model(args, sizes, say)
        if args.arm == "si":
            method = quickstart.stepwise_internalization(
                tokens_per_epoch=delta,
                start_epoch=args.start_epoch,
                smoothing_lambda=args.lam,
                keep_position=bool(args.keep_position),
                reset_optimizer=bool(args.reset),
            )
            removal = method.blocks["cot_removal"]
            if args.pace != "delta":
                del removal["tokens_per_epoch"], removal["start_epoch"]
                removal["start_step"] = args.start_epoch * mbpe
            if args.pace == "steps":
                removal["steps_per_token"] = int(args.steps_per_token)
            elif args.pace == "gate":
                gate = {"min_steps": args.gate_min, "max_steps": args.gate_max, "recovery": args.gate_recovery}
                removal["loss_gate"] = gate
        else:
            method = quickstart.NO_COT
        config = quickstart.config_for(method, sizes, directory, model_dir, args.seed)
        run_dir = Path(args.work) / "runs" / name
        if run_dir.exists() and not (args.resume or args.score_only):
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config["output_dir"] = str(run_dir / "out")
        config["dataset_prepared_path"] = str(run_dir / "prepared")
        config["logging_steps"] = args.logging_steps
        if args.pad_longest:
            config["pad_to_sequence_len"] = False
        if args.warmup_steps:
            config["lr_scheduler"] = "constant_with_warmup"
            config["warmup_steps"] = args.warmup_steps
        if args.eval_steps:
            config["eval_steps"] = args.eval_steps
        else:
            config["eval_strategy"] = "no"
            config.pop("eval_steps", None)
            config["cot_format"] = {"eval_accuracy_samples": 0}
            config.pop("test_datasets", None)
        if args.save_steps:
            config["save_strategy"] = "steps"
            config["save_steps"] = args.save_steps
            config["save_total_limit"] = 100 if args.score_steps else 2  # axolotl keeps 4 when null
        if args.resume:
            last = toy_run.last_checkpoint(run_dir / "out")
            if last is not None:
                config["resume_from_checkpoint"] = str(last)
                record["resumed_from"] = str(last)
        config_path = run_dir / "config.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        record["config"] = config
        pace = f"Δ={delta:.4f}, {args.steps_per_token} steps/token" if args.pace != "gate" else "loss gate"
        say(f"training ({args.arm}; {args.pace}: {pace}) config {config_path}")
        if args.score_only:  # the failed record's training figures, the saved model and its last trainer state
            from transformers import AutoModelForCausalLM, AutoTokenizer

            previous = json.loads(failed_path.read_text())
            keys = ("steps", "train_runtime_s", "train_call_wall_s", "steps_per_second", "train_call_cpu_s")
            keys += ("steps_per_cpu_second", "micro_batches_per_epoch", "parameters", "started_utc")
            record.update({key: previous.get(key) for key in keys}, scored_again_after=previous.get("error"))
            out = (run_dir / "out").resolve()
            model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
            last = toy_run.last_checkpoint(out)
            if last is None:
                raise FileNotFoundError(f"{out}: no checkpoint-N folder to read the trainer state from")
            history = json.loads((last / "trainer_state.json").read_text())["log_history"]
            steps = record["steps"]
        else:
            model, tokenizer, trainer, figures = toy_run.train_timed(config_path, toy_run.resumed_step(record))
            history = trainer.state.log_history
            steps = figures["steps"]
            record.update(figures, micro_batches_per_epoch=getattr(trainer, "micro_batches_per_epoch", None))
        keep = bool(args.arm == "si" and args.keep_position)
        scores = score(model, tokenizer, directory, keep)
        record["accuracy"] = scores
        if args.score_steps:
            from transformers import AutoModelForCausalLM

            record["accuracy_at_step"] = {}
            for step in (int(x) for x in args.score_steps.split(",")):
                ckpt = (run_dir / "out" / f"checkpoint-{step}").resolve()
                if not ckpt.is_dir():
                    say(f"step {step}: no checkpoint {ckpt}")
                    continue
                at_step = score(AutoModelForCausalLM.from_pretrained(ckpt), tokenizer, directory, keep)
                record["accuracy_at_step"][step] = at_step
                say(
                    f"step {step}: no-CoT exact val {at_step['val']['accuracy']:.3f}, test {at_step['test']['accuracy']:.3f}"
                )
        if args.arm == "si":  # also: does it still answer with its CoT? (only informative early on)
            with_cot = score(model, tokenizer, directory, False, splits=(("val", "valid.txt"),), no_cot=False)["val"]
            scores["val_with_cot"] = {key: with_cot[key] for key in ("accuracy", "correct", "n")}
        record["accuracy"] = scores
        record["history"] = history
        record["status"] = "ok"
        say(
            f"{steps} steps ({record['steps_per_second']} steps/s); no-CoT exact: "
            f"val {scores['val']['accuracy']:.3f} ({scores['val']['correct']}/{scores['val']['n']}), "
            f"test {scores['test']['accuracy']:.3f} ({scores['test']['correct']}/{scores['test']['n']})"
        )


if __name__ == "__main__":
    sys.exit(main())
