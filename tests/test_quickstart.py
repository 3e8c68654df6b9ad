"""`quickstart --quick` end to end, and the accuracy callback's view of tokenized rows.

The quickstart's accuracies are whatever the tiny runs reach: the test checks the
report's shape (methods, numbers in [0, 1], plot, JSON), never the values.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from axolotl_maskthought.args import PROMPT_TEMPLATES
from axolotl_maskthought.callbacks import example_from_tokens
from axolotl_maskthought.data import generate_arithmetic, generate_multiplication
from axolotl_maskthought.formats import CoTExample, parse_gsm8k_row, parse_icot_line, tokenize_gsm8k, tokenize_icot
from axolotl_maskthought.quickstart import format_table, strip_cot
from axolotl_maskthought.tiny import build_tokenizer

METHODS = ("stepwise_internalization", "no_cot_baseline", "masked_thought")


# ---- the callback reads back what a strategy tokenized --------------------------------------
def test_icot_rows_decode_to_their_examples():
    lines = generate_multiplication(3, 3, 20, seed=1)
    tokenizer = build_tokenizer(lines, vocab_size=300, add_bos=False)
    for line in lines + [strip_cot(lines[0])]:
        example = parse_icot_line(line)
        row = tokenize_icot(tokenizer, example)
        assert example_from_tokens(tokenizer, row["input_ids"], row["labels"], row["cot_mask"], "icot") == example


@pytest.mark.parametrize("template", [PROMPT_TEMPLATES["alpaca"], PROMPT_TEMPLATES["plain"], "Q: {question} A:"])
def test_gsm8k_rows_decode_to_their_examples(template):
    rows = generate_arithmetic(10, seed=2)
    tokenizer = build_tokenizer([row["question"] + row["answer"] for row in rows] + [template], vocab_size=400)
    for data_row in rows:
        example = parse_gsm8k_row(data_row)
        row = tokenize_gsm8k(tokenizer, example, template)
        found = example_from_tokens(tokenizer, row["input_ids"], row["labels"], row["cot_mask"], "gsm8k", template)
        assert found == CoTExample(example.question, example.cot.strip(), example.answer)


def test_empty_cot_lines_train_the_no_cot_layout():
    """The baseline's `q|| #### a` rows must be `q eos eos #### a eos`, what no-CoT eval prompts."""
    line = generate_multiplication(2, 2, 1, seed=0)[0]
    tokenizer = build_tokenizer([line], vocab_size=300, add_bos=False)
    row = tokenize_icot(tokenizer, parse_icot_line(strip_cot(line)))
    eos = tokenizer.eos_token_id
    first = row["input_ids"].index(eos)
    assert row["input_ids"][first + 1] == eos and not any(row["cot_mask"])


def test_table_lists_every_method():
    results = [{"method": name, "eval": "no CoT", "accuracy": 0.5, "n": 10, "train_seconds": 3.0} for name in METHODS]
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["method", "eval", "accuracy", "n", "train", "time"]
    assert [line.split()[0] for line in lines[2:]] == list(METHODS)


# ---- the command --------------------------------------------------------------------------------
def test_quickstart_quick_runs_and_reports(tmp_path):
    output = tmp_path / "qs"
    # one torch thread: on a shared 2-core box two threads per process thrash
    command = [sys.executable, "-m", "axolotl_maskthought", "quickstart", "--quick", "--threads", "1",
               "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "axolotl train" in out  # says what it ran
    table = out[out.index("method"):].splitlines()
    rows = {line.split()[0]: line.split() for line in table[2:2 + len(METHODS)]}
    assert sorted(rows) == sorted(METHODS)

    summary = json.loads((output / "results.json").read_text())
    by_method = {result["method"]: result for result in summary["results"]}
    assert sorted(by_method) == sorted(METHODS)
    for name, cells in rows.items():
        result = by_method[name]
        accuracy = float(cells[-3])
        assert 0 <= accuracy <= 1 and accuracy == pytest.approx(result["accuracy"], abs=5e-4)
        assert int(cells[-2]) == result["n"] > 0
        assert result["steps"] > 0 and result["history"]["loss"]
        assert all(0 <= value <= 1 for _, value in result["history"]["accuracy"])
        assert (output / f"{name}.yml").is_file()
    assert by_method["stepwise_internalization"]["history"]["removed_tokens_mean"]
    assert rows["masked_thought"][1:3] == ["with", "CoT"] and rows["no_cot_baseline"][1:3] == ["no", "CoT"]
    assert (output / "quickstart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
