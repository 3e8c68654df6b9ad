"""`quickstart --quick` end to end, and the accuracy callback's view of tokenized rows.

The quickstart's accuracies are whatever the tiny runs reach: the test checks that the
report (table, verdicts, JSON, plot) agrees with what the run measured, never the values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data.formats import CoTExample, parse_gsm8k_row, parse_icot_line, tokenize_gsm8k, tokenize_icot
from axolotl_maskthought.data.generators import generate_arithmetic, generate_multiplication
from axolotl_maskthought.eval.callback import example_from_tokens
from axolotl_maskthought.toy.experiment import format_table, plot, strip_cot, verdict
from axolotl_maskthought.toy.tiny import build_tokenizer

METHODS = ("sft", "masked_thought", "no_cot_training", "stepwise_internalization")


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


def _result(label, accuracy, n=200, evaluation="with CoT"):
    return {
        "label": label,
        "accuracy": accuracy,
        "n": n,
        "eval": evaluation,
        "correct": round(accuracy * n),
        "steps": 10,
        "train_seconds": 3.0,
    }


def test_verdict_is_computed_from_the_numbers():
    assert verdict(_result("Masked Thought", 0.5), _result("SFT", 0.435)) == (
        "Masked Thought beat SFT by 6.5 points (0.500 vs 0.435 on 200 held-out problems, with CoT)."
    )
    lower = verdict(_result("Masked Thought", 0.41), _result("SFT", 0.435))
    assert lower.startswith("Masked Thought did not beat SFT: 2.5 points lower (0.410 vs 0.435")
    assert verdict(_result("X", 0.2), _result("Y", 0.2)).startswith("X did not beat Y: equal accuracy")


def test_table_lists_every_method():
    results = [_result("SFT", 0.25), _result("Masked Thought", 0.5)]
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["method", "answers", "accuracy", "correct", "steps", "train", "time"]
    assert lines[2].startswith("SFT ") and lines[3].startswith("Masked Thought ")
    assert "50/200" in lines[2] and "0.500" in lines[3]


def test_mft_table_and_verdict_carry_the_accuracy_after_an_error():
    sft = {**_result("SFT", 0.98), "after_error_accuracy": 0.18, "after_error_correct": 36, "after_error_n": 200}
    mft = {
        **_result("Masked Thought", 0.9),
        "after_error_accuracy": 0.45,
        "after_error_correct": 90,
        "after_error_n": 200,
    }
    lines = format_table([sft, mft]).splitlines()
    assert lines[0].split()[:6] == ["method", "answers", "accuracy", "correct", "after", "error"]
    assert "0.180 (36/200)" in lines[2] and "0.450 (90/200)" in lines[3]
    text = verdict(mft, sft)
    assert text.startswith("Masked Thought did not beat SFT: 8.0 points lower (0.900 vs 0.980")
    assert text.endswith(
        "After one injected CoT error the answer survived 0.450 of the time with Masked Thought against 0.180 "
        "with SFT (200 problems, 2.5x): more robust to an error in its chain of thought."
    )
    worse = verdict({**mft, "after_error_accuracy": 0.1}, sft)
    assert worse.endswith("(200 problems, 0.6x): less robust to an error in its chain of thought.")
    assert verdict({**mft, "after_error_accuracy": 0.0}, {**sft, "after_error_accuracy": 0.0}).endswith(
        "(200 problems): equal recovery."
    )
    # bench/RESULTS.md §10, seed 1: 0.186 vs 0.164 on 500 problems is 11 of 500, inside two standard errors
    # (0.048): the verdict must not call that "more robust"
    close = verdict(
        {**mft, "after_error_accuracy": 0.186, "after_error_n": 500},
        {**sft, "after_error_accuracy": 0.164, "after_error_n": 500},
    )
    assert close.endswith(
        "(500 problems, 1.1x): a difference of +0.022, within sampling noise (two standard errors 0.048); "
        "no evidence either way."
    )
    assert "robust" not in close
    # with per-problem results: the paired figure on the problems both answer right clean (here 0, 1 and 3;
    # problem 2 is right clean for SFT only, problem 4 for neither, so neither counts)
    each = {
        "clean_correct_each": [True, True, False, True, False],
        "after_error_correct_each": [True, True, False, False, True],
    }
    sft_each = {
        "clean_correct_each": [True, True, True, True, False],
        "after_error_correct_each": [False, True, True, False, False],
    }
    paired = verdict({**mft, **each}, {**sft, **sft_each})
    assert paired.endswith(
        "On the 3 problems both answer right without an error, the answer survived it 0.667 of the time with "
        "Masked Thought against 0.333 with SFT."
    )
    assert "On the" not in verdict({**mft, **each}, sft)  # one side without the lists: no paired figure
    # outside two standard errors (0.12 against 0.085) it is called
    assert verdict({**mft, "after_error_accuracy": 0.3}, sft).endswith(
        "more robust to an error in its chain of thought."
    )
    # the SI comparison has no recovery column: the table stays as it was
    assert "after" not in format_table([_result("no-CoT training", 0.4), _result("SI", 0.9)]).splitlines()[0]


def test_default_is_the_2x2_si_comparison_in_optimizer_steps():
    """The default trains SI with keep_position, λ 4 and the reset, against no-CoT training for the same
    optimizer steps; both answer with no CoT. The sizes are constants the lead sets from measurements."""
    from axolotl_maskthought.config import CoTRemovalConfig
    from axolotl_maskthought.toy.experiment import WIN_2X2, WIN_2X2_PACE, WIN_2X2_SIZES, config_for

    removal = CoTRemovalConfig(**WIN_2X2.treatment.blocks["cot_removal"])
    assert (removal.keep_position, removal.smoothing_lambda, removal.reset_optimizer) == (True, 4, True)
    assert (removal.start_step, removal.steps_per_token) == (WIN_2X2_PACE.start_step, WIN_2X2_PACE.steps_per_token)
    assert WIN_2X2_SIZES.a_digits == WIN_2X2_SIZES.b_digits == 2
    configs = [config_for(m, WIN_2X2_SIZES, Path("d"), Path("m"), 0) for m in (WIN_2X2.baseline, WIN_2X2.treatment)]
    for key in ("max_steps", "learning_rate", "warmup_steps", "lr_scheduler", "micro_batch_size", "seed"):
        assert configs[0][key] == configs[1][key], key
    assert configs[0]["max_steps"] == WIN_2X2_SIZES.max_steps and "cot_removal" not in configs[0]
    assert WIN_2X2.baseline.no_cot_eval and WIN_2X2.treatment.no_cot_eval
    # every token is gone with room to train without CoT
    last = WIN_2X2_PACE.start_step + 8 * WIN_2X2_PACE.steps_per_token
    assert last < WIN_2X2_SIZES.max_steps


def test_problem_files_are_distinct_and_held_out(tmp_path):
    """The default's files: 6,400 distinct training problems of the 8,100 2x2 ones, then exactly 500 test
    and 200 validation problems that are in neither training nor each other (drawing with replacement
    once gave 4,370 distinct training problems, and a filter over a fixed number of draws once gave
    460 test problems instead of 500)."""
    from axolotl_maskthought.toy.experiment import WIN_2X2_SIZES, write_problems

    write_problems(tmp_path, WIN_2X2_SIZES)
    questions = {}
    for name in ("train_cot", "train_no_cot", "test", "valid"):
        lines = (tmp_path / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        questions[name] = [line.split("||", 1)[0] for line in lines]
    assert len(questions["train_cot"]) == len(set(questions["train_cot"])) == WIN_2X2_SIZES.train_rows
    assert questions["train_no_cot"] == questions["train_cot"]
    assert len(set(questions["test"])) == WIN_2X2_SIZES.test_rows and len(set(questions["valid"])) == 200
    assert not set(questions["test"]) & set(questions["valid"])
    assert not (set(questions["test"]) | set(questions["valid"])) & set(questions["train_cot"])


# ---- the command --------------------------------------------------------------------------------
# `--quick` run with matplotlib made unimportable: a plain install without it must still train,
# print the table and verdicts and write results.json; then the plot is drawn in this process.
BLOCK_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; from axolotl_maskthought.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def test_quickstart_quick_runs_and_reports(tmp_path):
    output = tmp_path / "qs"
    # one torch thread: on a shared 2-core box two threads per process thrash
    command = [
        sys.executable,
        "-c",
        BLOCK_MATPLOTLIB,
        "quickstart",
        "--quick",
        "--threads",
        "1",
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out, err = done.stdout, done.stderr
    assert "axolotl train" in out  # says what it ran
    # for a person: no library log lines, warnings or tracebacks on the terminal (they are in the log)
    for noise in ("Traceback", "Warning", "WARNING", "Failed to load", "it/s]", "[INFO]"):
        assert noise not in out + err, noise
    assert (output / "train.log").stat().st_size > 0

    summary = json.loads((output / "results.json").read_text())
    assert len(summary["comparisons"]) == 2
    for comparison in summary["comparisons"]:
        baseline, treatment = comparison["results"]
        assert comparison["verdict"] == verdict(treatment, baseline)
        assert f"Verdict: {comparison['verdict']}" in out
        table = out[out.index(comparison["title"] + " (") :].splitlines()[1:5]  # the table's heading
        for result, line in zip((baseline, treatment), table[2:]):
            assert line.startswith(result["label"])
            assert f"{result['accuracy']:.3f}" in line and f"{result['correct']}/{result['n']}" in line
            assert 0 <= result["accuracy"] <= 1 and result["n"] > 0
            assert result["correct"] == round(result["accuracy"] * result["n"])
            assert result["steps"] > 0 and result["history"]["loss"] and result["parameters"] > 0
            assert all(0 <= value <= 1 for _, value in result["history"]["accuracy"])
            assert (Path(result["config"])).is_file()
    methods = {r["method"]: r for c in summary["comparisons"] for r in c["results"]}
    assert sorted(methods) == sorted(METHODS)
    # the default's path: a pace in optimizer steps, both arms side by side for the same steps
    default = summary["comparisons"][0]
    assert default["methods"]["stepwise_internalization"]["cot_removal"]["steps_per_token"] == 2
    assert [r["steps"] for r in default["results"]] == [32, 32]
    assert "both arms side by side" in out
    # --mft's path: clean accuracy and accuracy after one injected error, in the table and the verdict
    for name in ("sft", "masked_thought"):
        assert 0 <= methods[name]["after_error_accuracy"] <= 1 and methods[name]["after_error_n"] > 0
        # the per-problem lists behind the paired figure agree with the totals
        result = methods[name]
        assert len(result["clean_correct_each"]) == result["n"] == len(result["after_error_correct_each"])
        assert sum(result["clean_correct_each"]) == result["correct"]
        assert sum(result["after_error_correct_each"]) == result["after_error_correct"]
    assert "After one injected CoT error" in summary["comparisons"][1]["verdict"]
    assert methods["stepwise_internalization"]["history"]["removed_tokens_mean"]
    assert methods["masked_thought"]["eval"] == methods["sft"]["eval"] == "with CoT"
    assert methods["no_cot_training"]["eval"] == methods["stepwise_internalization"]["eval"] == "no CoT"
    assert "plot skipped" in out and not (output / "quickstart.png").exists()

    pytest.importorskip("matplotlib")
    plot(summary, output / "quickstart.png")
    assert (output / "quickstart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
