"""Can a small model trained from scratch learn anything on GSM8K-format data?

The question that decides whether the Masked Thought comparison can be made on
GSM8K here (issue 6): explicit-CoT SFT of a tiny Llama, randomly initialised, on
all of ../shared/data/gsm8k/train.jsonl through axolotl (the gsm8k strategy,
Alpaca prompt), then ``evaluate_model`` on the first ``--test-count`` problems of
test.jsonl: accuracy, and how many generations at least end in a well-formed
``#### number`` (the format learned, whatever the arithmetic).

    python bench/gsm8k_probe.py [--epochs 1] [--test-count 200]
"""

from __future__ import annotations

import argparse

import common
from common import shared_file

from axolotl_maskthought.data.files import read_jsonl

MODEL = dict(arch="llama", hidden=256, layers=4, heads=4, max_positions=512, seed=0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="pipeline check: 300 training rows, 20 test problems")
    args = parser.parse_args(argv)
    work = common.WORK_DIR / ("gsm8k_probe_quick" if args.quick else "gsm8k_probe")
    work.mkdir(parents=True, exist_ok=True)
    note = common.machine_note()

    from axolotl_maskthought.data.files import write_jsonl
    from axolotl_maskthought.toy.tiny import build_tiny

    train_path = shared_file("gsm8k", "train.jsonl")
    rows = read_jsonl(train_path, limit=300 if args.quick else None)
    if args.quick:
        args.test_count, train_path = 20, work / "train300.jsonl"
        write_jsonl(train_path, rows)
    model_dir = work / "llama256"
    if not (model_dir / "config.json").exists():
        build_tiny(model_dir, [row["question"] + "\n" + row["answer"] for row in rows], vocab_size=2048, **MODEL)
    dataset = {"path": str(train_path), "ds_type": "json", "type": "axolotl_maskthought.strategies.gsm8k"}
    plugins = ["axolotl_maskthought.MaskThoughtPlugin", "steptimer.StepTimerPlugin"]
    config = common.base_config(
        model_dir,
        dataset,
        work / "out" / "sft",
        plugins=plugins,
        sequence_len=512,
        micro_batch_size=args.batch_size,
        num_epochs=args.epochs,
        learning_rate=args.lr,
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=50,
        save_strategy="no",
    )
    config_path = common.write_yaml(work / "sft.yml", config)
    trained = common.run_training(config_path, work / "sft.json", work / "sft.log", threads=args.threads)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_maskthought.data.formats import parse_gsm8k_row
    from axolotl_maskthought.eval.evaluation import evaluate_model

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(work / "out" / "sft")
    model = AutoModelForCausalLM.from_pretrained(work / "out" / "sft")
    examples = [parse_gsm8k_row(row) for row in read_jsonl(shared_file("gsm8k", "test.jsonl"), limit=args.test_count)]
    scored = evaluate_model(model, tokenizer, examples, "gsm8k", batch_size=32, max_new_tokens=256, progress=False)
    well_formed = sum(p["extracted"] is not None for p in scored["predictions"])
    losses = [entry["loss"] for entry in trained.get("log_history", []) if "loss" in entry]
    result = {
        "command": common.command_line(),
        "machine": note,
        "model": MODEL,
        "train_rows": len(rows),
        "steps": len(trained["step_seconds"]),
        "train_seconds": round(trained["train_call_seconds"], 1),
        "final_loss": losses[-1] if losses else None,
        "test_problems": scored["n"],
        "accuracy": scored["accuracy"],
        "correct": scored["correct"],
        "well_formed_answers": well_formed,
        "sample": [p["generation"][:300] for p in scored["predictions"][:3]],
    }
    common.save_json(work / "gsm8k_probe_result.json", result)
    print(f"\n{result['command']}\n{note}")
    print(
        f"{result['steps']} steps in {result['train_seconds']} s, final loss {result['final_loss']}; "
        f"accuracy {scored['accuracy']:.3f} ({scored['correct']}/{scored['n']}), "
        f"well-formed '#### number' answers {well_formed}/{scored['n']}"
    )
    return result


if __name__ == "__main__":
    main()
