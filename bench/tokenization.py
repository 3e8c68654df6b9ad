"""Tokenization throughput: our gsm8k strategy vs axolotl's built-in alpaca strategy.

Both strategies' ``tokenize_prompt`` are called in this process over every row of
../shared/data/gsm8k/train.jsonl (7,473 rows), with the same tokenizer (a byte-level
BPE of 2,048 tokens trained on the GSM8K text, with BOS, as bench/overhead.py
builds) and the same Alpaca prompt text. The machine is shared, so the two are
interleaved finely: each pass walks the data in chunks of 100 rows and tokenizes
every chunk with both strategies back to back (order alternating per chunk),
summing each strategy's time; passes are repeated. Rows per second per pass,
median and spread, and the ratio ours / alpaca of each pass. The alpaca rows are
``{"instruction": question, "output": answer}``.

    python bench/tokenization.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import time

from common import WORK_DIR, command_line, machine_note, save_json, shared_file, spread

from axolotl_maskthought.data.files import read_jsonl


def strategies(tokenizer):
    from axolotl.prompt_tokenizers import AlpacaPromptTokenizingStrategy
    from axolotl.prompters import AlpacaPrompter
    from axolotl.utils.dict import DictDefault

    from axolotl_maskthought.strategies import gsm8k

    cfg = DictDefault({"train_on_inputs": False, "sequence_len": 2048, "cot_format": {"prompt_template": "alpaca"}})
    ours = gsm8k.load(tokenizer, cfg, None)
    alpaca = AlpacaPromptTokenizingStrategy(AlpacaPrompter(), tokenizer, False, 2048)
    return ours, alpaca


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats over the first 2,000 rows")
    args = parser.parse_args(argv)
    from axolotl_maskthought.toy.tiny import build_tokenizer

    rows = read_jsonl(shared_file("gsm8k", "train.jsonl"))
    if args.quick:
        args.repeats, rows = 2, rows[:2000]
    note = machine_note()
    tokenizer = build_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], vocab_size=2048, add_bos=True)
    ours, alpaca = strategies(tokenizer)
    alpaca_rows = [{"instruction": r["question"], "output": r["answer"]} for r in rows]

    # Same text, same prompt: the two token streams should match up to the answer layout.
    sample_ours, sample_alpaca = ours.tokenize_prompt(rows[0]), alpaca.tokenize_prompt(alpaca_rows[0])
    same_prompt = sample_ours["labels"].count(-100) == sample_alpaca["labels"].count(-100)

    subjects = {"ours": (ours, rows), "alpaca": (alpaca, alpaca_rows)}
    chunk = 100

    def one_pass():
        seconds = {"ours": 0.0, "alpaca": 0.0}
        counted = {"ours": 0, "alpaca": 0}
        for chunk_index, begin in enumerate(range(0, len(rows), chunk)):
            order = ("ours", "alpaca") if chunk_index % 2 == 0 else ("alpaca", "ours")
            for name in order:
                strategy, data = subjects[name]
                start = time.perf_counter()
                for row in data[begin : begin + chunk]:
                    counted[name] += len(strategy.tokenize_prompt(row)["input_ids"])
                seconds[name] += time.perf_counter() - start
        return {name: len(rows) / seconds[name] for name in seconds}, counted

    for name, (strategy, data) in subjects.items():  # warm-up
        for row in data[:200]:
            strategy.tokenize_prompt(row)
    rates = {"ours": [], "alpaca": []}
    for index in range(args.repeats):
        per_pass, tokens = one_pass()
        for name in rates:
            rates[name].append(per_pass[name])
        print(f"pass {index}: ours {rates['ours'][-1]:.0f} rows/s, alpaca {rates['alpaca'][-1]:.0f} rows/s", flush=True)
    ratios = [a / b for a, b in zip(rates["ours"], rates["alpaca"])]
    result = {
        "command": command_line(),
        "machine": note,
        "rows": len(rows),
        "tokens_per_pass": tokens,
        "same_prompt_length": same_prompt,
        "rows_per_second": {name: spread(values) for name, values in rates.items()},
        "ratio_ours_to_alpaca": spread(ratios),
    }
    save_json(WORK_DIR / "tokenization_result.json", result)
    r = result["ratio_ours_to_alpaca"]
    print(
        f"\n{result['command']}\n{note}\nrows {len(rows)}; tokens per pass {tokens}; same prompt length: {same_prompt}"
    )
    for name, stats in result["rows_per_second"].items():
        print(f"{name:7s} {stats['median']:.0f} rows/s [{stats['min']:.0f}, {stats['max']:.0f}]")
    print(f"ratio ours/alpaca {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]")
    return result


if __name__ == "__main__":
    main()
