#!/usr/bin/env python
"""Masked Thought vs SFT: recovery from one injected error in the chain of thought, through the product.

One run = one arm (``sft``, or ``mft`` at ``--ratio`` with ``--replacement random|mask``) at one
seed. Everything goes through the package (``axolotl_maskthought.toy.experiment``, the
quickstart's runner): ``prepare`` writes disjoint train / validation / test files (distinct
training problems) and the tiny GPT-2 with its BPE tokenizer (each seed gets its own initial
weights, as in ``bench/si_2x2.py``); ``config_for`` writes the axolotl YAML (the Masked Thought
block is ``toy.experiment.masked_thought``: rate warm-up over 0.66 of the steps, ``scope:
response``; ``--replacement mask`` is ``replacement: mask_token``, for which the plugin adds
``<mask>`` to the tokenizer through axolotl's ``tokens:``); ``train_in_process`` trains as
``axolotl train CONFIG`` does. Scoring is the package's eval code only, on each split asked for:

* clean: ``eval.evaluation.evaluate_model`` with CoT (exact match of the answer);
* after one error: ``eval.error_injection.evaluate_error_recovery`` (``eval --inject-error digit
  --error-seed 0``): the model is fed the gold CoT up to a seeded position in its first half,
  that digit d replaced by (d + 1) mod 10, and continues greedily; the answer is scored.

Settings are chosen on the validation split (``val``); the test split (``test``) is only reported.
One JSON per run (config, seed, steps, wall and CPU seconds, accuracies with n and correct,
log history; failures too) goes to ``--results``; ``bench/mft_recovery_table.py`` summarises them.

The defaults are the setting of ``quickstart --mft`` and of bench/RESULTS.md §10 (2x2, 400 distinct
training problems x 62 epochs = 775 steps, constant lr 1e-3). Reproduce (package importable, e.g.
``PYTHONPATH=<clone>``):

  OMP_NUM_THREADS=1 python bench/mft_recovery.py --arm sft --seed 0 --tag r2x2
  OMP_NUM_THREADS=1 python bench/mft_recovery.py --arm mft --ratio 0.2 --replacement random --seed 0 --tag r2x2
  OMP_NUM_THREADS=1 python bench/mft_recovery.py --arm mft --ratio 0.2 --replacement mask --seed 0 --tag r2x2
  python bench/mft_recovery_table.py --tag r2x2 --split test

The issue's probe setting (3x3, ~3k distinct problems, 4,000 steps; not run here, see §10):
``--a-digits 3 --b-digits 3 --train-rows 3008 --max-steps 4000 --epochs 43 --warmup-steps 200``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import toy_run

SPLITS = {"val": "valid.txt", "test": "test.txt"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", choices=["sft", "mft"], required=True)
    p.add_argument("--ratio", type=float, default=0.2, help="masked_thought.ratio (mft only)")
    p.add_argument("--replacement", choices=["random", "mask"], default="random", help="mft only; mask = <mask>")
    p.add_argument("--mft-warmup", type=float, default=0.66, help="masked_thought.warmup (the paper's)")
    p.add_argument("--seed", type=int, default=0, help="training seed and the tiny model's initialisation seed")
    p.add_argument("--tag", required=True, help="experiment name (results file prefix)")
    p.add_argument("--a-digits", type=int, default=2)
    p.add_argument("--b-digits", type=int, default=2)
    p.add_argument("--train-rows", type=int, default=400, help="distinct training problems")
    p.add_argument("--test-rows", type=int, default=500)
    p.add_argument("--val-rows", type=int, default=200)
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps (0: --epochs passes)")
    p.add_argument("--epochs", type=int, default=62, help="passes over the training rows (with --max-steps: a cap)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear LR warm-up, then constant (0: constant)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--splits", default="val,test", help="comma-separated splits to score: val, test")
    p.add_argument("--error-seed", type=int, default=0, help="seed of the injected error's position")
    p.add_argument("--work", default="bench/work/mft_recovery")
    p.add_argument("--results", default="bench/results/mft_recovery")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--rescore",
        action="store_true",
        help="no training: score the saved model of every ok run of --tag whose record lacks per-problem "
        "results again (same eval, same splits), check the totals match and add the per-problem lists",
    )
    args = p.parse_args(argv)
    if args.arm == "mft" and not 0 < args.ratio <= 1:
        p.error("--ratio must be in (0, 1] for --arm mft")
    unknown = set(args.splits.split(",")) - set(SPLITS)
    if unknown:
        p.error(f"--splits: unknown {sorted(unknown)}; expected val and/or test")
    return args


def run_name(args) -> str:
    arm = "sft" if args.arm == "sft" else f"mft_{args.replacement}{args.ratio:g}"
    return f"{args.tag}_{arm}_seed{args.seed}"


def score(model, tokenizer, directory: Path, splits: list[str], error_seed: int) -> dict:
    """Clean with-CoT exact match and accuracy after one injected CoT error, per split, through
    the package's eval (``evaluate_model`` and ``evaluate_error_recovery``)."""
    from axolotl_maskthought.eval.error_injection import evaluate_error_recovery
    from axolotl_maskthought.toy import experiment

    scores = {}
    for split in splits:
        examples = experiment.held_out_examples(directory / SPLITS[split])
        max_new = experiment._max_new_tokens(tokenizer, examples)
        started = time.perf_counter()
        clean = experiment.score_examples(model, tokenizer, examples, no_cot=False)
        after = evaluate_error_recovery(
            model, tokenizer, examples, "icot", None, error_seed, "digit", 64, max_new, False
        )
        scores[split] = {
            "clean": {key: clean[key] for key in ("accuracy", "correct", "n", "no_answer")},
            "after_error": {key: after[key] for key in ("accuracy", "correct", "n", "no_answer", "skipped", "rules")},
            # per problem, in file order (the digit rule injects into every 2x2/3x3 CoT: none skipped)
            "clean_correct_each": [bool(row["correct"]) for row in clean["predictions"]],
            "after_error_correct_each": [bool(row["correct"]) for row in after["predictions"]],
            "eval_seconds": round(time.perf_counter() - started, 1),
            "sample_clean": clean["predictions"][:2],
            "sample_after_error": after["predictions"][:3],
        }
    return scores


def rescore(args) -> None:
    """Score the saved final models of ``--tag``'s ok runs again and add the per-problem lists."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in sorted(Path(args.results).glob(f"{args.tag}_*.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "ok" or all("clean_correct_each" in s for s in record["accuracy"].values()):
            continue
        run_args = argparse.Namespace(**record["args"])
        saved = Path(record["config"]["output_dir"])
        model = AutoModelForCausalLM.from_pretrained(saved)
        tokenizer = AutoTokenizer.from_pretrained(saved)
        scores = score(model, tokenizer, toy_run.data_dir(run_args), list(record["accuracy"]), run_args.error_seed)
        for split, new in scores.items():
            old = record["accuracy"][split]
            for kind in ("clean", "after_error"):
                if (new[kind]["correct"], new[kind]["n"]) != (old[kind]["correct"], old[kind]["n"]):
                    raise SystemExit(f"{path}: {split} {kind} rescored {new[kind]} != recorded {old[kind]}")
            old["clean_correct_each"] = new["clean_correct_each"]
            old["after_error_correct_each"] = new["after_error_correct_each"]
        record["rescored_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path.write_text(json.dumps(record, indent=1, default=str))
        print(f"rescored {path.name}: totals match", flush=True)


def main(argv=None):
    args = parse(argv)
    toy_run.start(args.threads)
    if args.rescore:
        return rescore(args)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    name = run_name(args)
    out_path = results / f"{name}.json"
    record = toy_run.new_record(
        name,
        args,
        arm=args.arm,
        ratio=args.ratio if args.arm == "mft" else None,
        replacement=args.replacement if args.arm == "mft" else None,
        seed=args.seed,
    )
    say = toy_run.sayer(name)
    with toy_run.recorded(record, out_path, say):
        import yaml

        from axolotl_maskthought.toy import experiment

        sizes = toy_run.sizes_from(
            args,
            eval_steps=1,
            eval_accuracy_samples=0,
            max_steps=args.max_steps or None,
            warmup_steps=args.warmup_steps,
        )
        directory, model_dir = toy_run.prepare_data_and_model(args, sizes, say)
        if args.arm == "sft":
            method = experiment.SFT
        else:
            replacement = "mask_token" if args.replacement == "mask" else "random"
            method = experiment.masked_thought(args.ratio, replacement)
            method.blocks["masked_thought"]["warmup"] = args.mft_warmup
        config = experiment.config_for(method, sizes, directory, model_dir, args.seed)
        run_dir = Path(args.work) / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        config["output_dir"] = str(run_dir / "out")
        config["dataset_prepared_path"] = str(run_dir / "prepared")
        # no in-training evaluation: the scores below are taken once, after training
        config["eval_strategy"] = "no"
        config.pop("eval_steps", None)
        config.pop("test_datasets", None)
        config["cot_format"] = {"eval_accuracy_samples": 0}
        config_path = run_dir / "config.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        record["config"] = config
        say(f"training ({args.arm} {method.blocks or ''}) config {config_path}")
        model, tokenizer, trainer, figures = toy_run.train_timed(config_path)
        history = trainer.state.log_history
        steps, runtime, train_cpu = figures["steps"], figures["train_runtime_s"], figures["train_call_cpu_s"]
        record.update(
            figures,
            vocab=len(tokenizer),
            mask_token_id=tokenizer.convert_tokens_to_ids("<mask>") if "<mask>" in tokenizer.get_vocab() else None,
        )
        c1 = time.process_time()
        scores = score(model, tokenizer, directory, args.splits.split(","), args.error_seed)
        record["eval_cpu_s"] = round(time.process_time() - c1, 1)
        record["accuracy"] = scores
        record["history"] = history
        record["status"] = "ok"
        say(
            f"{steps} steps in {runtime:.0f} s (CPU {train_cpu:.0f} s); "
            + "; ".join(
                f"{split}: clean {s['clean']['accuracy']:.3f} ({s['clean']['correct']}/{s['clean']['n']}), "
                f"after one error {s['after_error']['accuracy']:.3f} "
                f"({s['after_error']['correct']}/{s['after_error']['n']})"
                for split, s in scores.items()
            )
        )


if __name__ == "__main__":
    sys.exit(main())
