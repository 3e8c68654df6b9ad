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

Evaluation (this script, not ``eval``): greedy decoding on held-out problems, exact
match of the answer after ``####``, with CoT (prompt ``question eos``, generate
CoT, eos, answer) and without (prompt ``question eos eos``). For a model trained
with ``keep_position``, no-CoT decoding numbers the positions after the prompt as
if the CoT (a fixed number of tokens for a fixed digit count) were still there,
as in training.

Data: training lines from ``axolotl_maskthought.data.generate_multiplication``
(one file per task, generator seed 1; the run seed only changes initial order and
masks); test: ../shared/data/icot/4_by_4_mult/test_bigbench.txt for 4x4, or
problems generated with seed 2 and filtered against the training set otherwise.
Training runs go to parallel subprocesses (``--jobs``); ``--eval-only`` scores
runs already trained.

    python bench/effect.py [--digits 4] [--methods no_cot,cot,si,mft] [--seeds 0,1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import WORK_DIR, base_config, command_line, machine_note, run_training, save_json, shared_file, write_yaml

ICOT = "axolotl_maskthought.strategies.icot"
# Runs train in parallel subprocesses, but evaluation loads models in this process:
# concurrent `from_pretrained` calls from threads re-initialised weights (transformers 5).
EVAL_LOCK = threading.Lock()
PLUGIN = "axolotl_maskthought.MaskThoughtPlugin"


def method_blocks(method: str, args) -> dict:
    if method == "no_cot":
        return {"cot_removal": {"remove_all_at": 0, "smoothing_lambda": None, "reset_optimizer": False}}
    if method == "cot":
        return {}
    if method == "si":
        return {
            "cot_removal": {
                "tokens_per_epoch": args.tokens_per_epoch,
                "smoothing_lambda": args.smoothing,
                "start_epoch": args.start_epoch,
                "remove_all_at": args.remove_all_at,
                "keep_position": not args.no_keep_position,
                "reset_optimizer": args.reset,
            }
        }
    if method == "mft" or method.startswith(("mft_", "mftmask_")):
        ratio = float(method.split("_", 1)[1]) if "_" in method else 0.4  # mft_0.1: ratio 0.1
        replacement = "mask_token" if method.startswith("mftmask_") else "random"
        return {"masked_thought": {"ratio": ratio, "replacement": replacement, "warmup": 0.66}}
    raise ValueError(f"unknown method {method!r}")


def prepare(
    work: Path, digits: int, train_count: int, test_count: int, model_kwargs: dict, val_count: int = 200
) -> dict:
    from axolotl_maskthought.data.files import write_lines
    from axolotl_maskthought.data.formats import parse_icot_line, tokenize_icot
    from axolotl_maskthought.data.generators import generate_multiplication
    from axolotl_maskthought.toy.tiny import build_tiny

    train = generate_multiplication(digits, digits, train_count, seed=1)
    if digits == 4:
        test = shared_file("icot", "4_by_4_mult", "test_bigbench.txt").read_text().splitlines()
    else:
        seen = {line.split("||")[0] for line in train}
        test = [
            line
            for line in generate_multiplication(digits, digits, test_count * 2, seed=2)
            if line.split("||")[0] not in seen
        ]
    test = [line for line in test if line.strip()][:test_count]
    # validation split (for choosing settings and the in-training curves): seed 3, none in train or test
    seen = {line.split("||")[0] for line in train + test}
    val = [
        line
        for line in generate_multiplication(digits, digits, val_count * 2, seed=3)
        if line.split("||")[0] not in seen
    ][:val_count]
    train_path = work / f"mult{digits}_{train_count}.txt"
    write_lines(train_path, train)
    val_path = work / f"mult{digits}_val{val_count}.txt"
    write_lines(val_path, val)
    model_dir = work / f"gpt2_{digits}_{model_kwargs['hidden']}x{model_kwargs['layers']}x{model_kwargs['heads']}"
    if not (model_dir / "config.json").exists():
        build_tiny(model_dir, train[:2000], vocab_size=300, arch="gpt2", **model_kwargs)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    example = tokenize_icot(tokenizer, parse_icot_line(train[0]))
    cot_tokens = sum(example["cot_mask"])
    return {
        "train_path": train_path,
        "test": test,
        "val": val,
        "val_path": val_path,
        "model_dir": model_dir,
        "cot_tokens": cot_tokens,
        "parameters": _parameters(model_dir),
        "sequence_tokens": len(example["input_ids"]),
    }


def _parameters(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


def greedy_accuracy(
    model_dir: Path, lines: list[str], with_cot: bool, position_shift: int = 0, batch_size: int = 250
) -> tuple[float, float]:
    """Greedy decoding (KV cache, explicit position ids): (exact-match accuracy, digit
    accuracy). Digit accuracy = the fraction of the gold answer's digits that the
    prediction has right at the same place (a finer signal where exact match is 0)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_maskthought.data.formats import icot_prompt_ids, parse_icot_line

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = tokenizer.eos_token_id
    examples = [parse_icot_line(line) for line in lines]
    stop_after = 2 if with_cot else 1  # generated EOS tokens that end an answer
    max_new = (sum(len(tokenizer(f" {e.cot}")["input_ids"]) for e in examples[:1]) + 40) if with_cot else 40
    correct, digits_right, digits_total = 0, 0, 0
    by_length: dict[int, list] = {}
    for example in examples:
        prompt = icot_prompt_ids(tokenizer, example.question, no_cot=not with_cot)
        by_length.setdefault(len(prompt), []).append((prompt, example.answer))
    with torch.no_grad():
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                input_ids = torch.tensor([prompt for prompt, _ in chunk])
                rows, length = input_ids.shape
                positions = torch.arange(length).expand(rows, length).clone()
                if position_shift and not with_cot:
                    positions[:, -1] += position_shift  # the second EOS sits after the (removed) CoT
                out = model(input_ids=input_ids, position_ids=positions, use_cache=True)
                cache, next_position = out.past_key_values, positions[:, -1:] + 1
                generated = [out.logits[:, -1].argmax(-1)]
                for _ in range(max_new - 1):
                    out = model(
                        input_ids=generated[-1].unsqueeze(1),
                        position_ids=next_position,
                        past_key_values=cache,
                        use_cache=True,
                    )
                    cache, next_position = out.past_key_values, next_position + 1
                    generated.append(out.logits[:, -1].argmax(-1))
                tokens = torch.stack(generated, 1).tolist()
                for row, (_, gold) in zip(tokens, chunk):
                    eos_seen, answer_ids = 0, []
                    for token in row:
                        if token == eos:
                            eos_seen += 1
                            if eos_seen == stop_after:
                                break
                            continue
                        if eos_seen == stop_after - 1:
                            answer_ids.append(token)
                    text = tokenizer.decode(answer_ids)
                    answer = text.split("####", 1)[1] if "####" in text else ""
                    correct += " ".join(answer.split()) == " ".join(gold.split())
                    digits_right += sum(p == g for p, g in zip(answer.split(), gold.split()))
                    digits_total += len(gold.split())
    return correct / len(lines), digits_right / digits_total


def run_one(method: str, seed: int, prepared: dict, args, work: Path) -> dict:
    name = f"{method}_s{seed}"
    dataset = {"path": str(prepared["train_path"]), "type": ICOT}
    blocks = method_blocks(method, args)
    config = base_config(
        prepared["model_dir"],
        dataset,
        work / "out" / name,
        plugins=[PLUGIN, "steptimer.StepTimerPlugin"],
        sequence_len=256,
        micro_batch_size=args.batch_size,
        num_epochs=args.epochs,
        learning_rate=args.lr,
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=seed,
        logging_steps=50,
        **blocks,
        **curve_settings(prepared, args),
        **(
            {"save_strategy": "steps", "save_steps": args.save_every, "save_only_model": True}
            if args.save_every
            else {"save_strategy": "no"}
        ),
    )
    config_path = write_yaml(work / f"{name}.yml", config)
    if not args.eval_only and not (args.reuse and (work / f"{name}.json").exists()):
        run_training(config_path, work / f"{name}.json", work / f"{name}.log", threads=args.threads)
    with EVAL_LOCK:
        return evaluate_run(method, seed, prepared, work)


def curve_settings(prepared: dict, args) -> dict:
    """In-training held-out accuracy on the validation split (``cot_format.eval_accuracy_samples``)."""
    if not args.curve_every:
        return {}
    return {
        "test_datasets": [{"path": str(prepared["val_path"]), "type": ICOT, "split": "train"}],
        "eval_strategy": "steps",
        "eval_steps": args.curve_every,
        "eval_batch_size": 100,
        "cot_format": {"eval_accuracy_samples": len(prepared["val"])},
    }


def evaluate_run(method: str, seed: int, prepared: dict, work: Path) -> dict:
    """Accuracy of a finished run's saved model, with its training record."""
    name = f"{method}_s{seed}"
    result = json.loads((work / f"{name}.json").read_text())
    model_dir = work / "out" / name
    import yaml

    removal = yaml.safe_load((work / f"{name}.yml").read_text()).get("cot_removal") or {}
    shift = prepared["cot_tokens"] if removal.get("keep_position") else 0
    cot_modes = {"with_cot": method != "no_cot" and method != "si", "no_cot": method in ("si", "no_cot", "cot")}
    scores, val_scores = {}, {}
    for mode, wanted in cot_modes.items():
        if wanted:
            with_cot = mode == "with_cot"
            scores[mode] = greedy_accuracy(
                model_dir, prepared["test"], with_cot, position_shift=0 if with_cot else shift
            )
            val_scores[mode] = greedy_accuracy(
                model_dir, prepared["val"], with_cot, position_shift=0 if with_cot else shift
            )
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
    model_kwargs = dict(hidden=args.hidden, layers=args.layers, heads=args.heads, max_positions=256, seed=0)
    work = WORK_DIR / ("effect_quick" if args.quick else f"effect_{args.digits}x{args.digits}{args.tag}")
    work.mkdir(parents=True, exist_ok=True)
    note = machine_note()
    prepared = prepare(work, args.digits, args.train_count, args.test_count, model_kwargs, args.val_count)
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
        "model": model_kwargs,
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
