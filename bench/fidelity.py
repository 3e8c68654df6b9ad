#!/usr/bin/env python
"""Fidelity: the plugin's Stepwise Internalization against the official ICoT-SI trainer, same small run.

Our side of issue 16 item 1. The official trainer (github.com/da03/Internalize_CoT_Step_by_Step)
is run OUTSIDE this repository (its code never enters it); the exact commands are in
``bench/results/fidelity/README.md``. This script:

- ``prepare``: writes the 2x2 multiplication data in the official ICoT text format (6,400
  distinct training problems, 32 validation rows for the official trainer's per-epoch check,
  500 held-out test problems never trained on), builds the runner's tiny GPT-2 (width 128,
  2 layers, seed 0) and trains it with the full CoT through axolotl (SFT), giving the one
  initial model both trainers start their removal phase from (``init_gpt2/``);
- ``ours``: the removal phase through axolotl (``train_in_process`` = ``axolotl train``):
  Δ = 2 tokens per epoch of 200 micro-batches (one token every 100 steps: all 9 CoT tokens gone
  at step 900), 8 epochs = 1,600 steps, λ 4, left, optimizer reset on, AdamW lr 1e-3 constant (no warm-up), weight decay
  0.01, clip 1.0, batch 32, ``keep_position`` on or off; per-step loss logged;
- ``official``: reads an official run (its per-step loss log, its last ``state_dict.bin``),
  saves the model HF-style and scores it like ours;
- ``compare``: smoothed loss curves, gaps between implementations against seed spread.

Both sides are scored with the package's ``evaluate_model`` on the same 500 held-out problems:
no-CoT (with the ``keep_position`` layout of the arm) and with-CoT; ``keep_position`` models also
under both position layouts (the official one, which moves the first separator too, and the
plugin's before the fix, which did not), through the package's generator and scorer.

  export PYTHONPATH=<clone> OMP_NUM_THREADS=1
  python bench/fidelity.py prepare  --work /work/fidelity_runs
  python bench/fidelity.py ours     --work /work/fidelity_runs --seed 0 --keep-position 1
  python bench/fidelity.py official --work /work/fidelity_runs --seed 0 --keep-position 1
  python bench/fidelity.py compare  --work /work/fidelity_runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "fidelity"
TRAIN_ROWS, BATCH, EPOCHS, DELTA, LAMBDA, LR = 6400, 32, 8, 2.0, 4.0, 1e-3
PRETRAIN_STEPS, PRETRAIN_LR, PRETRAIN_WARMUP = 1500, 1e-3, 200
TEST_ROWS, VAL_ROWS = 500, 32
CHECKPOINTS = (100, 250, 500, 750, 900, 1200, 1599)
SMOOTH = 100  # window of the trailing mean


def _env():
    from axolotl_maskthought.toy.tiny import OFFLINE_ENV

    os.environ.update({k: v for k, v in OFFLINE_ENV.items() if k not in os.environ})


def sizes(epochs=EPOCHS, lr=LR, warmup=0, max_steps=None):
    from axolotl_maskthought.toy.experiment import Sizes

    return Sizes(
        a_digits=2,
        b_digits=2,
        train_rows=TRAIN_ROWS,
        test_rows=TEST_ROWS,
        epochs=epochs,
        micro_batch_size=BATCH,
        learning_rate=lr,
        hidden=128,
        layers=2,
        heads=4,
        eval_steps=10**9,
        eval_accuracy_samples=0,
        val_rows=VAL_ROWS,
        max_steps=max_steps,
        warmup_steps=warmup,
    )


def _quiet_config(config: dict, out: Path) -> dict:
    """No in-training evaluation (the comparison is on the training loss and the final scores)."""
    config = dict(config)
    config.pop("test_datasets", None)
    config.pop("cot_format", None)
    config.pop("eval_steps", None)
    config.update({"eval_strategy": "no", "logging_steps": 1, "output_dir": str(out), "save_strategy": "no"})
    return config


def _train(config: dict, path: Path):
    import yaml

    from axolotl_maskthought.toy.experiment import train_in_process

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return train_in_process(path)


def score(model, tokenizer, work: Path, keep_position: bool) -> dict:
    """No-CoT and with-CoT exact match on test.txt with the package's eval code.

    ``no_cot``/``with_cot``: ``evaluate_model`` as the package numbers positions. With
    ``keep_position`` also both no-CoT position layouts, through the package's
    ``generate_greedy`` and scorer: ``no_cot_separator_moved`` (the official trainer's: the
    prompt ``q eos eos`` numbers both separators ``len(cot)`` further on) and
    ``no_cot_separator_kept`` (the plugin before the fix: only the second separator moves).
    """
    from axolotl_maskthought.data.formats import tokenize_icot
    from axolotl_maskthought.eval.generation import generate_greedy
    from axolotl_maskthought.eval.prompts import build_prompts
    from axolotl_maskthought.eval.scoring import score_generation
    from axolotl_maskthought.toy.experiment import _max_new_tokens, held_out_examples, score_examples

    examples = held_out_examples(work / "test.txt")
    new = _max_new_tokens(tokenizer, examples)
    out = {}
    for name, no_cot in (("no_cot", True), ("with_cot", False)):
        res = score_examples(model, tokenizer, examples, no_cot, keep_position)
        out[name] = {"accuracy": res["accuracy"], "correct": res["correct"], "n": res["n"]}
    if keep_position:
        prompts = build_prompts(tokenizer, examples, "icot", None, no_cot=True)
        cots = [tokenize_icot(tokenizer, example)["cot_mask"] for example in examples]
        for name, back in (("no_cot_separator_moved", 1), ("no_cot_separator_kept", 0)):
            shifts = [(cot.index(1) - back, sum(cot)) for cot in cots]
            gens = generate_greedy(
                model, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, 1, 64, new, False, shifts
            )
            correct = 0
            for example, (ids, _finished) in zip(examples, gens):
                text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                correct += bool(score_generation(text, example.answer, "icot", True)[1])
            out[name] = {"accuracy": correct / len(examples), "correct": correct, "n": len(examples)}
    return out


def rescore(work: Path, name: str) -> None:
    """Score a saved model again (``work/runs/NAME/final``) into ``NAME.json``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((RESULTS / f"{name}.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(work / "runs" / name / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(work / "init_gpt2")
    record["scores"] = score(model, tokenizer, work, record["keep_position"])
    _save(record, f"{name}.json")
    print(name, json.dumps(record["scores"]))


# ---- prepare ------------------------------------------------------------------------------------
def prepare(work: Path) -> None:
    from axolotl_maskthought.toy import experiment

    work.mkdir(parents=True, exist_ok=True)
    s = sizes()
    init = work / "init_gpt2"  # 'gpt2' in the name: the official trainer asserts it for keep_position
    if not init.exists():
        model_dir = experiment.prepare(work, s)  # train_cot.txt (6,400 distinct), tiny GPT-2 seed 0
    write_held_out(work)
    if init.exists():  # already trained: score it on the held-out problems again
        from transformers import AutoModelForCausalLM, AutoTokenizer

        scores = score(AutoModelForCausalLM.from_pretrained(init), AutoTokenizer.from_pretrained(init), work, False)
        record = json.loads((RESULTS / "pretrain.json").read_text())
        _save({**record, "scores": scores}, "pretrain.json")
        print(json.dumps(scores))
        return
    pre = replace(s, epochs=100, max_steps=PRETRAIN_STEPS, learning_rate=PRETRAIN_LR, warmup_steps=PRETRAIN_WARMUP)
    config = experiment.config_for(experiment.SFT, pre, work, model_dir, seed=0)
    config = _quiet_config(config, work / "runs" / "pretrain")
    started = time.perf_counter()
    model, tokenizer, trainer = _train(config, work / "pretrain.yml")
    model.save_pretrained(init, safe_serialization=True)
    tokenizer.save_pretrained(init)
    scores = score(model, tokenizer, work, keep_position=False)
    record = {
        "kind": "pretrain",
        "steps": trainer.state.global_step,
        "seconds": round(time.perf_counter() - started, 1),
        "config": config,
        "scores": scores,
        "loss": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
        "cot_tokens": _cot_lengths(tokenizer, work),
    }
    _save(record, "pretrain.json")
    print(json.dumps({k: record[k] for k in ("steps", "seconds", "scores", "cot_tokens")}))


def write_held_out(work: Path) -> None:
    """``test.txt`` (500) and ``valid_small.txt`` (32): 2x2 questions never in ``train_cot.txt``.

    2x2 has 8,100 questions and training takes 6,400 of them, so the held-out problems are drawn
    (seed 1) from the 1,700 left; the runner's own ``prepare`` draws with repeats and finds fewer.
    """
    import random

    from axolotl_maskthought.data.files import write_lines
    from axolotl_maskthought.data.generators import multiplication_line

    seen = {line.split("||", 1)[0] for line in (work / "train_cot.txt").read_text().splitlines() if line}
    pool = [multiplication_line(a, b, 2, 2) for a in range(10, 100) for b in range(10, 100)]
    pool = [line for line in pool if line.split("||", 1)[0] not in seen]
    random.Random(1).shuffle(pool)
    write_lines(work / "test.txt", pool[:TEST_ROWS])
    write_lines(work / "valid_small.txt", pool[TEST_ROWS : TEST_ROWS + VAL_ROWS])


def _cot_lengths(tokenizer, work: Path) -> dict:
    from axolotl_maskthought.data.formats import parse_icot_line, tokenize_icot

    lengths = [
        sum(tokenize_icot(tokenizer, parse_icot_line(line))["cot_mask"])
        for line in (work / "train_cot.txt").read_text().splitlines()[:500]
    ]
    return {"min": min(lengths), "max": max(lengths)}


# ---- our side -----------------------------------------------------------------------------------
def ours(work: Path, seed: int, keep_position: bool) -> None:
    from axolotl_maskthought.toy import experiment

    name = f"ours_kp{int(keep_position)}_seed{seed}"
    method = experiment.stepwise_internalization(
        tokens_per_epoch=DELTA,
        start_epoch=0,
        smoothing_lambda=LAMBDA,
        keep_position=keep_position,
        reset_optimizer=True,
    )
    config = experiment.config_for(method, sizes(), work, work / "init_gpt2", seed=seed)
    config = _quiet_config(config, work / "runs" / name)
    record = {"kind": "ours", "name": name, "seed": seed, "keep_position": keep_position, "config": config}
    started = time.perf_counter()
    try:
        model, tokenizer, trainer = _train(config, work / f"{name}.yml")
        history = trainer.state.log_history
        record.update(
            steps=trainer.state.global_step,
            train_seconds=round(time.perf_counter() - started, 1),
            loss=[e["loss"] for e in history if "loss" in e],
            scheduled=[e.get("cot_removal/scheduled") for e in history if "loss" in e],
            removed_tokens_mean=[e.get("cot_removal/removed_tokens_mean") for e in history if "loss" in e],
            resets=[e["step"] for e in history if e.get("cot_removal/optimizer_reset")],
        )
        record["scores"] = score(model, tokenizer, work, keep_position)
        model.save_pretrained(work / "runs" / name / "final")
    except Exception:
        record["error"] = traceback.format_exc()
        _save(record, f"{name}.json")
        raise
    _save(record, f"{name}.json")
    print(name, record["steps"], record["train_seconds"], json.dumps(record["scores"]))


# ---- the official side --------------------------------------------------------------------------
LOSS_LINE = re.compile(r"^FIDELITY step=(\d+) loss=(\S+) scheduled=(\S+)")


def official(work: Path, seed: int, keep_position: bool) -> None:
    """Read the official run ``work/official_kp{K}_seed{S}``: log and last checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = f"official_kp{int(keep_position)}_seed{seed}"
    run = work / name
    log = (run / "train.log").read_text(encoding="utf-8", errors="replace")
    loss, scheduled = [], []
    for line in log.splitlines():
        match = LOSS_LINE.match(line)
        if match:
            assert int(match.group(1)) == len(loss), f"step {match.group(1)} out of order"
            loss.append(float(match.group(2)))
            scheduled.append(match.group(3))
    resets = [int(m.group(1)) for m in re.finditer(r"step (\d+)\. removing: \S+\nRESETTING", log)]
    checkpoints = sorted(run.glob("ckpt/checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    last = checkpoints[-1]
    state = torch.load(last / "state_dict.bin", map_location="cpu")
    model = AutoModelForCausalLM.from_pretrained(work / "init_gpt2")
    prefix = "base_model."
    missing, unexpected = model.load_state_dict(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=False
    )
    missing = [k for k in missing if not k.endswith("attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    tokenizer = AutoTokenizer.from_pretrained(work / "init_gpt2")
    model.save_pretrained(run / "hf_final")
    tokenizer.save_pretrained(run / "hf_final")
    record = {
        "kind": "official",
        "name": name,
        "seed": seed,
        "keep_position": keep_position,
        "steps": len(loss),
        "checkpoint": str(last),
        "command": (run / "command.txt").read_text().strip() if (run / "command.txt").exists() else None,
        "train_seconds": _seconds(run),
        "loss": loss,
        "scheduled": scheduled,
        "resets": resets,
        "scores": score(model.eval(), tokenizer, work, keep_position),
    }
    _save(record, f"{name}.json")
    print(name, record["steps"], json.dumps(record["scores"]))


def _seconds(run: Path):
    path = run / "seconds.txt"
    return float(path.read_text()) if path.exists() else None


# ---- comparison ---------------------------------------------------------------------------------
def trailing_mean(values: list[float], window: int = SMOOTH) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def compare() -> dict:
    """Per run: smoothed loss at fixed steps and the scores; per keep_position and implementation
    (``ours``, ``ours-v1`` = before the keep_position fix) against ``official``: the largest gap
    between the seed means of the smoothed loss, against the largest seed-to-seed spread of
    either implementation, over the steps after the first window."""
    runs = {}
    for path in sorted(RESULTS.glob("*_kp*_seed*.json")):
        record = json.loads(path.read_text())
        if "error" in record or "failure" in record or not record.get("loss"):
            continue
        runs[(record["kind"], record["keep_position"], record["seed"])] = record
    table, verdicts = [], {}
    for kp in (False, True):
        curves = {(kind, seed): trailing_mean(r["loss"]) for (kind, k, seed), r in runs.items() if k == kp}
        for (kind, seed), curve in sorted(curves.items()):
            record = runs[(kind, kp, seed)]
            row = {
                "impl": kind,
                "keep_position": kp,
                "seed": seed,
                "steps": record["steps"],
                "final_smoothed_loss": round(curve[-1], 4),
                **{f"loss@{c}": round(curve[c], 4) for c in CHECKPOINTS if c < len(curve)},
                **{name: value["accuracy"] for name, value in record["scores"].items()},
            }
            table.append(row)
        n = min((len(c) for c in curves.values()), default=0)
        by_kind: dict[str, list[list[float]]] = {}
        for (kind, _seed), curve in sorted(curves.items()):
            by_kind.setdefault(kind, []).append(curve)
        spread, spread_at, spread_of = 0.0, None, None
        spreads = []  # per step, the larger spread of the implementations with two seeds
        for step in range(SMOOTH, n):
            here = 0.0
            for kind, members in by_kind.items():
                if kind == "ours-v1" or len(members) < 2:
                    continue
                values = [c[step] for c in members]
                here = max(here, max(values) - min(values))
                if max(values) - min(values) > spread:
                    spread, spread_at, spread_of = max(values) - min(values), step, kind
            spreads.append(here)
        if "official" not in by_kind:
            continue
        for kind, members in by_kind.items():
            if kind == "official":
                continue
            gap, gap_at, gaps = 0.0, None, []
            for step in range(SMOOTH, n):
                mine = sum(c[step] for c in members) / len(members)
                theirs = sum(c[step] for c in by_kind["official"]) / len(by_kind["official"])
                gaps.append(abs(mine - theirs))
                if abs(mine - theirs) > gap:
                    gap, gap_at = abs(mine - theirs), step
            verdicts[f"{kind} vs official, keep_position={kp}"] = {
                "seeds": {"mine": len(members), "official": len(by_kind["official"])},
                "largest_gap_of_seed_means": round(gap, 4),
                "at_step": gap_at,
                "largest_seed_spread": round(spread, 4),
                "spread_at_step": spread_at,
                "spread_of": spread_of,
                "gap_within_spread": gap <= spread,
                "mean_gap": round(sum(gaps) / max(len(gaps), 1), 4),
                "mean_spread": round(sum(spreads) / max(len(spreads), 1), 4),
                "steps_gap_above_spread": sum(g > sp for g, sp in zip(gaps, spreads)),
                "steps_compared": len(gaps),
            }
    summary = {"table": table, "verdicts": verdicts, "smoothing": f"trailing mean over {SMOOTH} steps"}
    _save(summary, "summary.json")
    print(json.dumps(summary, indent=1))
    return summary


def _save(record: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {**record, "host": platform.node(), "python": sys.version.split()[0], "time": time.time()}
    (RESULTS / name).write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["prepare", "ours", "official", "rescore", "compare"])
    parser.add_argument("--name", help="rescore: the run's name (its JSON and work/runs/NAME/final)")
    parser.add_argument("--work", type=Path, default=Path("/work/fidelity_runs"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-position", type=int, choices=[0, 1], default=1)
    args = parser.parse_args(argv)
    _env()
    if args.command == "prepare":
        prepare(args.work)
    elif args.command == "ours":
        ours(args.work, args.seed, bool(args.keep_position))
    elif args.command == "official":
        official(args.work, args.seed, bool(args.keep_position))
    elif args.command == "rescore":
        rescore(args.work, args.name)
    else:
        compare()


if __name__ == "__main__":
    main()
