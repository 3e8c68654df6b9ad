"""The effect at small scale: multiplication, a tiny GPT-2 trained from scratch through axolotl.

Methods (same model, data, steps, learning rate; one process per run):
  no_cot  — plain no-CoT training: ``cot_removal: {remove_all_at: 0}`` removes the
            whole CoT from step 0, leaving ``question eos eos #### answer eos``.
  cot     — explicit CoT SFT (the plugin's icot strategy, no transform).
  si      — Stepwise Internalization: full-CoT warm-up epochs (``start_epoch``),
            then CoT tokens removed from the left, ``keep_position``, remove-all
            at ``--remove-all-at``, no optimizer reset (REFERENCE §5 suggestions).
  mft     — Masked Thought on the CoT data (ratio 0.4, random tokens, warm-up 0.66);
            ``mft_R`` the same at ratio R (``mft_0.1``).

Data, tiny model and each method's YAML come from the quickstart's experiment runner
(``axolotl_maskthought.toy.experiment``: ``prepare``, ``config_for`` and its methods), so the
benchmark trains what users run. Training runs go to parallel subprocesses (``--jobs``,
bench/train_worker.py, which calls ``toy.experiment.train_in_process``); ``--eval-only``
scores runs already trained.

Evaluation: the package's own :func:`~axolotl_maskthought.eval.evaluation.evaluate_model`
(what ``axolotl-maskthought eval`` runs): greedy decoding on the held-out problems
(``test.txt``) and the validation split (``valid.txt``), the ICoT paper's exact match of the
answer after ``####``, with CoT and without (``--no-cot``, and for a model trained with
``keep_position`` the positions after the prompt shifted by each example's CoT length, as
in training). Digit accuracy (the fraction of the gold answer's digits right at the same
place) is read from the same predictions.

    python bench/effect.py [--digits 4] [--methods no_cot,cot,si,mft] [--seeds 0,1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import WORK_DIR, command_line, machine_note, run_training, save_json, write_yaml

from axolotl_maskthought.toy import experiment

# Runs train in parallel subprocesses, but evaluation loads models in this process:
# concurrent `from_pretrained` calls from threads re-initialised weights (transformers 5).
EVAL_LOCK = threading.Lock()


def method_for(method: str, args) -> experiment.Method:
    """The quickstart runner's method for a name of ``--methods``."""
    if method == "no_cot":
        return experiment.NO_COT
    if method == "cot":
        return experiment.SFT
    if method == "si":
        return experiment.stepwise_internalization(
            tokens_per_epoch=args.tokens_per_epoch,
            start_epoch=args.start_epoch,
            smoothing_lambda=args.smoothing,
            keep_position=not args.no_keep_position,
            reset_optimizer=args.reset,
            remove_all_at=args.remove_all_at,
        )
    if method == "mft" or method.startswith(("mft_", "mftmask_")):
        ratio = float(method.split("_", 1)[1]) if "_" in method else 0.4  # mft_0.1: ratio 0.1
        return experiment.masked_thought(ratio, "mask_token" if method.startswith("mftmask_") else "random")
    raise ValueError(f"unknown method {method!r}")


def sizes_for(args) -> experiment.Sizes:
    return experiment.Sizes(
        a_digits=args.digits,
        b_digits=args.digits,
        train_rows=args.train_count,
        test_rows=args.test_count,
        epochs=args.epochs,
        micro_batch_size=args.batch_size,
        learning_rate=args.lr,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        eval_steps=args.curve_every or 1,
        eval_accuracy_samples=args.val_count if args.curve_every else 0,
        val_rows=args.val_count,
    )


def prepare(work: Path, sizes: experiment.Sizes) -> dict:
    """The quickstart runner's files and tiny model, plus the figures the report prints."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_maskthought.data.formats import tokenize_icot

    experiment.prepare(work, sizes)  # deterministic: --eval-only and --reuse find the same files
    test = experiment.held_out_examples(work / "test.txt")
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    example = tokenize_icot(tokenizer, experiment.held_out_examples(work / "train_cot.txt")[0])
    return {
        "model_dir": work / "model",
        "test": test,
        "val": experiment.held_out_examples(work / "valid.txt"),
        "cot_tokens": sum(example["cot_mask"]),
        "parameters": AutoModelForCausalLM.from_pretrained(work / "model").num_parameters(),
        "sequence_tokens": len(example["input_ids"]),
    }


def held_out_accuracy(model, tokenizer, examples, no_cot: bool, keep_position: bool) -> tuple[float, float]:
    """(exact-match accuracy, digit accuracy) from the package's ``evaluate_model``."""
    scored = experiment.score_examples(model, tokenizer, examples, no_cot, keep_position and no_cot, batch_size=250)
    digits_right = digits_total = 0
    for row in scored["predictions"]:
        gold = row["gold"].split()
        digits_right += sum(p == g for p, g in zip((row["extracted"] or "").split(), gold))
        digits_total += len(gold)
    return scored["accuracy"], digits_right / digits_total


def run_one(method: str, seed: int, prepared: dict, args, work: Path) -> dict:
    name = f"{method}_s{seed}"
    config = experiment.config_for(method_for(method, args), sizes_for(args), work, prepared["model_dir"], seed)
    config.update(
        plugins=[*config["plugins"], "steptimer.StepTimerPlugin"],
        output_dir=str(work / "out" / name),
        dataset_prepared_path=str(work / f"prepared-{name}"),  # parallel runs never share one
        logging_steps=50,
        eval_batch_size=100,
    )
    if not args.curve_every:
        del config["test_datasets"]
        config.update(eval_strategy="no", cot_format={})
    if args.save_every:
        config.update(save_strategy="steps", save_steps=args.save_every, save_only_model=True)
    config_path = write_yaml(work / f"{name}.yml", config)
    if not args.eval_only and not (args.reuse and (work / f"{name}.json").exists()):
        run_training(config_path, work / f"{name}.json", work / f"{name}.log", threads=args.threads)
    with EVAL_LOCK:
        return evaluate_run(method, seed, prepared, work)


def evaluate_run(method: str, seed: int, prepared: dict, work: Path) -> dict:
    """Accuracy of a finished run's saved model, with its training record."""
    import yaml

    from axolotl_maskthought.eval.loading import load_model_and_tokenizer

    name = f"{method}_s{seed}"
    result = json.loads((work / f"{name}.json").read_text())
    model, tokenizer = load_model_and_tokenizer(work / "out" / name)
    removal = yaml.safe_load((work / f"{name}.yml").read_text()).get("cot_removal") or {}
    keep_position = bool(removal.get("keep_position"))
    cot_modes = {"with_cot": method != "no_cot" and method != "si", "no_cot": method in ("si", "no_cot", "cot")}
    scores, val_scores = {}, {}
    for mode, wanted in cot_modes.items():
        if wanted:
            no_cot = mode == "no_cot"
            scores[mode] = held_out_accuracy(model, tokenizer, prepared["test"], no_cot, keep_position)
            val_scores[mode] = held_out_accuracy(model, tokenizer, prepared["val"], no_cot, keep_position)
        else:
            scores[mode] = val_scores[mode] = (float("nan"), float("nan"))
    accuracy = {mode: exact for mode, (exact, _) in scores.items()}
    digit_accuracy = {mode: round(digits, 4) for mode, (_, digits) in scores.items()}
    losses = [entry["loss"] for entry in result.get("log_history", []) if "loss" in entry]
    record = {
        "method": method,
        "seed": seed,
        "steps": len(result.get("step_seconds", [])),
        "train_seconds": round(result["train_call_seconds"], 1),
        "final_loss": losses[-1] if losses else None,
        "median_step_s": round(statistics.median(result["step_seconds"]), 3),
        "accuracy": accuracy,
        "digit_accuracy": digit_accuracy,
        "val_accuracy": {mode: exact for mode, (exact, _) in val_scores.items()},
        "val_digit_accuracy": {mode: round(digits, 4) for mode, (_, digits) in val_scores.items()},
        "curve": [
            {
                k: entry[k]
                for k in entry
                if k in ("step", "eval_loss", "eval_accuracy_cot", "eval_accuracy_no_cot", "cot_removal/scheduled")
            }
            for entry in result.get("log_history", [])
            if any(k in entry for k in ("eval_accuracy_cot", "cot_removal/scheduled"))
        ],
        "parameters": prepared["parameters"],
        "config": str(work / f"{name}.yml"),
    }
    print(json.dumps(record), flush=True)
    return record


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=4)
    parser.add_argument("--methods", default="no_cot,cot,si,mft")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train-count", type=int, default=8000)
    parser.add_argument("--test-count", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--val-count", type=int, default=200, help="validation problems (seed 3)")
    parser.add_argument(
        "--curve-every",
        type=int,
        default=0,
        help="log held-out accuracy on the validation split every N steps (0: off)",
    )
    parser.add_argument("--save-every", type=int, default=0, help="save the weights every N steps (curves)")
    parser.add_argument("--smoothing", type=float, default=4, help="SI: λ")
    parser.add_argument("--reset", action="store_true", help="SI: reset the optimizer at each removal")
    parser.add_argument("--no-keep-position", action="store_true", help="SI: positions restart after removal")
    parser.add_argument("--start-epoch", type=int, default=2, help="SI: full-CoT epochs first")
    parser.add_argument("--tokens-per-epoch", type=float, default=16, help="SI: Δ")
    parser.add_argument("--remove-all-at", type=int, default=None, help="SI: K (default: never jump)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 torch thread each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-only", action="store_true", help="evaluate the runs already trained")
    parser.add_argument(
        "--reuse", action="store_true", help="train only the runs with no result yet (same work dir, same arguments)"
    )
    parser.add_argument("--tag", default="", help="suffix of the work directory (several budgets side by side)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="pipeline check only: 3x3, cot and si, 1,000 examples, 2 epochs, 100 test problems",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.digits, args.train_count, args.test_count, args.epochs, args.methods = 3, 1000, 100, 2, "cot,si"
        args.start_epoch, args.tokens_per_epoch, args.hidden, args.layers = 1, 40, 64, 2
    sizes = sizes_for(args)
    work = WORK_DIR / ("effect_quick" if args.quick else f"effect_{args.digits}x{args.digits}{args.tag}")
    work.mkdir(parents=True, exist_ok=True)
    note = machine_note()
    prepared = prepare(work, sizes)
    print(f"CoT tokens per example {prepared['cot_tokens']}, sequence {prepared['sequence_tokens']} tokens", flush=True)
    jobs = [(method, int(seed)) for seed in args.seeds.split(",") for method in args.methods.split(",")]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(lambda job: run_one(job[0], job[1], prepared, args, work), jobs))
    table = {}
    for method in args.methods.split(","):
        runs = [r for r in records if r["method"] == method]
        table[method] = {
            f"{metric}_{mode}" if metric != "accuracy" else mode: {
                "values": [r[metric][mode] for r in runs],
                "median": statistics.median(r[metric][mode] for r in runs),
            }
            for metric in ("accuracy", "digit_accuracy", "val_accuracy")
            for mode in ("with_cot", "no_cot")
        }
    result = {
        "command": command_line(),
        "machine": note,
        "args": vars(args),
        "model": {"hidden": sizes.hidden, "layers": sizes.layers, "heads": sizes.heads},
        "parameters": prepared["parameters"],
        "cot_tokens": prepared["cot_tokens"],
        "sequence_tokens": prepared["sequence_tokens"],
        "test_problems": len(prepared["test"]),
        "runs": records,
        "table": table,
    }
    save_json(work / "effect_result.json", result)
    print(f"\n{result['command']}\n{note}")
    for method, row in table.items():
        print(
            f"{method:7s} with CoT {row['with_cot']['values']}  no CoT {row['no_cot']['values']}  "
            f"digits: with CoT {row['digit_accuracy_with_cot']['values']}  "
            f"no CoT {row['digit_accuracy_no_cot']['values']}"
        )
    return result


if __name__ == "__main__":
    main()
