"""Answer extraction and scoring (pure), and the `score` command, on the real test files."""

from __future__ import annotations

import json
import re

import pytest

from axolotl_maskthought.cli import main
from axolotl_maskthought.eval import scoring

MULTIPLICATION_FILES = ("4_by_4_mult/test_bigbench.txt", "9_by_9_mult/test_bigbench.txt")


def _gsm8k_rows(shared_data):
    path = shared_data / "gsm8k" / "test.jsonl"
    return path, [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _icot_lines(path):
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_gsm8k_gold_solution_scores_correct(shared_data):
    path, rows = _gsm8k_rows(shared_data)
    examples = scoring.load_examples(path, "gsm8k")
    assert len(examples) == len(rows) == 1319
    for row, example in zip(rows, examples):
        # The raw solution text, as a model trained on it would generate it.
        assert scoring.score_generation(row["answer"], example.answer, "gsm8k") == (
            example.answer.replace(",", ""),
            True,
        )


def test_altered_gsm8k_answers_score_wrong(shared_data):
    path, rows = _gsm8k_rows(shared_data)
    examples = scoring.load_examples(path, "gsm8k")
    for row, example in zip(rows, examples):
        solution, gold = row["answer"].rsplit("#### ", 1)
        number = float(gold.replace(",", ""))
        for wrong in (number + 1, number - 1, number * 10 + 3):
            text = str(int(wrong)) if wrong.is_integer() else repr(wrong)
            generation = f"{solution}#### {text}"
            assert scoring.score_generation(generation, example.answer, "gsm8k")[1] is False, generation
        # The answer line missing: nothing to extract.
        assert scoring.score_generation(solution, example.answer, "gsm8k") == (None, False)


@pytest.mark.parametrize("relative", ["gsm8k/test.txt", *MULTIPLICATION_FILES])
def test_every_icot_gold_scores_correct_and_a_changed_digit_wrong(shared_data, relative):
    path = shared_data / "icot" / relative
    lines = _icot_lines(path)
    examples = scoring.load_examples(path, "icot")
    assert len(examples) == len(lines)
    for line, example in zip(lines, examples):
        generation = " " + line.split("||", 1)[1]  # what follows the prompt: ' cot #### answer'
        assert scoring.score_generation(generation, example.answer, "icot") == (example.answer.replace(",", ""), True)
        digit = re.search(r"[0-9]", example.answer)
        changed = str((int(digit.group()) + 1) % 10)
        altered = example.answer[: digit.start()] + changed + example.answer[digit.end() :]
        wrong = generation.rsplit("####", 1)[0] + "#### " + altered
        assert scoring.score_generation(wrong, example.answer, "icot")[1] is False


def test_gsm8k_commas_and_tolerance():
    assert scoring.extract_gsm8k_answer("so #### 1,234,567") == "1234567"
    assert scoring.is_correct("1234", "1,234", "gsm8k")
    assert scoring.score_generation("x\n#### 1,234", "1234", "gsm8k") == ("1234", True)
    assert scoring.score_generation("#### 10.00005", "10", "gsm8k")[1] is True  # within 1e-4
    assert scoring.score_generation("#### 9.99991", "10", "gsm8k")[1] is True
    assert scoring.score_generation("#### 10.0002", "10", "gsm8k")[1] is False
    assert scoring.score_generation("#### 18.", "18", "gsm8k")[1] is True
    assert scoring.score_generation("#### 18.0", "18", "gsm8k")[1] is True
    assert scoring.score_generation("#### -3", "-3", "gsm8k")[1] is True
    assert scoring.score_generation("#### 3", "-3", "gsm8k")[1] is False
    # The first answer line counts; malformed numbers and a missing space after #### are wrong.
    assert scoring.score_generation("#### 5\n#### 7", "5", "gsm8k") == ("5", True)
    assert scoring.score_generation("#### 1.2.3", "1.2", "gsm8k")[1] is False
    assert scoring.score_generation("#### ,", "0", "gsm8k") == ("", False)
    assert scoring.score_generation("####7", "7", "gsm8k") == (None, False)


def test_no_cot_gsm8k_scores_marker_plus_generation():
    # The no-CoT prompt ends with '####': the model continues with ' 18'.
    assert scoring.score_generation(" 18", "18", "gsm8k", no_cot=True) == ("18", True)
    assert scoring.score_generation(" 18", "18", "gsm8k", no_cot=False) == (None, False)
    # ICoT no-CoT: the generation starts at the answer, '#### ...' included.
    assert scoring.score_generation(" #### 8 1", "8 1", "icot", no_cot=True) == ("8 1", True)


def test_icot_exact_match_with_commas_removed():
    assert scoring.score_generation(" a b #### 1,000", "1000", "icot") == ("1000", True)
    assert scoring.score_generation(" #### 1000", "1,000", "icot")[1] is True
    assert scoring.score_generation(" #### 7 8 0", "7 8 0 0", "icot")[1] is False  # not a prefix match
    assert scoring.score_generation(" #### 7  8", "7 8", "icot")[1] is False  # exact string
    assert scoring.score_generation(" 7 8", "7 8", "icot") == (None, False)


def test_formats_and_row_errors(tmp_path):
    assert scoring.infer_format("a/test.jsonl") == "gsm8k"
    assert scoring.infer_format("a/test.txt") == "icot"
    assert scoring.infer_format("a/test.txt", "gsm8k") == "gsm8k"
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        scoring.infer_format("a.txt", "csv")
    with pytest.raises(ValueError, match="pass --format"):
        scoring.infer_format("a.csv")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1 #### 1"}\n\n{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: row 3: .*####"):
        scoring.load_examples(bad, "gsm8k")
    assert len(scoring.load_examples(bad, "gsm8k", limit=1)) == 1
    words = tmp_path / "words.jsonl"
    words.write_text('{"question": "q", "answer": "#### seven"}\n')
    with pytest.raises(ValueError, match="row 1: gold answer 'seven' is not a number"):
        scoring.load_examples(words, "gsm8k")
    with pytest.raises(FileNotFoundError, match="no such file"):
        scoring.load_examples(tmp_path / "absent.txt", "icot")


def test_custom_fields_come_from_cot_format(tmp_path):
    from axolotl_maskthought.config import CoTFormatConfig

    path = tmp_path / "custom.jsonl"
    path.write_text('{"problem": "1+1?", "solution": "1+1=2\\n#### 2"}\n')
    options = CoTFormatConfig(question_field="problem", answer_field="solution")
    assert scoring.load_examples(path, "gsm8k", options)[0].answer == "2"


def test_score_command_on_gsm8k_gold(shared_data, tmp_path, capsys):
    path, rows = _gsm8k_rows(shared_data)
    predictions = tmp_path / "gold_predictions.jsonl"
    predictions.write_text("".join(json.dumps({"generation": row["answer"]}) + "\n" for row in rows))
    output = tmp_path / "scored"
    assert main(["score", "--data", str(path), "--predictions", str(predictions), "--output", str(output)]) == 0
    assert "accuracy 1.0000 (1319/1319)" in capsys.readouterr().out
    summary = json.loads((output / "summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["correct"] == summary["n"] == 1319
    assert summary["format"] == "gsm8k" and summary["no_cot"] is False
    scored = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert len(scored) == 1319 and all(row["correct"] for row in scored)

    # The data file itself, read through --field.
    assert main(["score", "--data", str(path), "--predictions", str(path), "--field", "answer"]) == 0
    assert "(1319/1319)" in capsys.readouterr().out


def test_score_command_icot_and_errors(shared_data, tmp_path, capsys):
    path = shared_data / "icot" / "4_by_4_mult" / "test_bigbench.txt"
    lines = _icot_lines(path)
    predictions = tmp_path / "p.jsonl"
    # Half right, half with the answer reversed (palindromes aside, wrong).
    rows = []
    for index, line in enumerate(lines):
        cot, answer = line.split("||", 1)[1].split("#### ")
        rows.append({"generation": f" {cot}#### {answer if index % 2 == 0 else answer[::-1]}"})
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "o"
    assert main(["score", "--data", str(path), "--predictions", str(predictions), "--output", str(output)]) == 0
    summary = json.loads((output / "summary.json").read_text())
    palindromes = sum(1 for i, line in enumerate(lines) if i % 2 and (a := line.split("#### ")[1]) == a[::-1])
    assert summary["correct"] == len(lines) // 2 + palindromes
    assert summary["accuracy"] == summary["correct"] / summary["n"]
    capsys.readouterr()

    assert main(["score", "--data", str(path), "--predictions", str(predictions), "--limit", "10"]) == 2
    assert "1000 generations for 10 examples" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"generation": "#### 1"}\n{"text": "x"}\n')
    assert main(["score", "--data", str(path), "--predictions", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: row 2: no string field `generation`" in err and "Traceback" not in err


# ---- answers with nothing to read are counted apart from wrong ones --------------------
def test_has_answer_separates_format_failures_from_wrong_answers():
    # icot: text after `####`; gsm8k: a number after `#### `
    assert scoring.has_answer(scoring.extract_answer(" 1 2 #### 3 4", "icot"), "icot")
    assert scoring.has_answer(scoring.extract_answer(" #### 9 9", "icot"), "icot")  # wrong, but an answer
    assert not scoring.has_answer(scoring.extract_answer(" 1 2 + 3 4 ( 5 6 )", "icot"), "icot")  # CoT, no `####`
    assert not scoring.has_answer(scoring.extract_answer(" 1 2 ####", "icot"), "icot")  # nothing after it
    assert scoring.has_answer(scoring.extract_answer("so #### 7", "gsm8k"), "gsm8k")
    for unreadable in ("so the answer is 7", "####7", "#### seven", "#### ,", "#### 1.2.3"):
        assert not scoring.has_answer(scoring.extract_answer(unreadable, "gsm8k"), "gsm8k"), unreadable
    assert scoring.has_answer(scoring.extract_answer(" 7", "gsm8k", no_cot=True), "gsm8k")
    with pytest.raises(ValueError, match="3 correct flags for 2"):
        scoring.summarize([True, False, False], [True, True])


def test_score_counts_no_answer_apart_from_wrong(shared_data, tmp_path, capsys):
    """The case of issue 10: a model trained with CoT left, asked for no CoT, writes the
    rest of a CoT and stops at EOS. Those rows have no answer; they are not wrong answers."""
    path = shared_data / "icot" / "4_by_4_mult" / "test_bigbench.txt"
    lines = _icot_lines(path)[:30]
    generations = []
    for index, line in enumerate(lines):
        cot, answer = line.split("||", 1)[1].split("#### ")
        if index < 12:  # the rest of a CoT, stopped at the EOS: decoded text has no `####`
            generations.append(" " + " ".join(cot.split()[5:]))
        elif index < 20:  # an answer, the wrong one (a digit too many)
            generations.append(" #### 9 " + answer)
        else:
            generations.append(" #### " + answer)
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"generation": text}) + "\n" for text in generations))
    output = tmp_path / "o"
    assert (
        main(
            [
                "score",
                "--data",
                str(path),
                "--predictions",
                str(predictions),
                "--no-cot",
                "--limit",
                "30",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy 0.3333 (10/30); 8 wrong, 12 with no answer" in out
    assert "note: 12 of 30 generations have no answer" in out and "trained with CoT left" in out
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["correct"], summary["wrong"], summary["no_answer"], summary["n"]) == (10, 8, 12, 30)


# ---- chat data (issue 15, kind 4: `eval` on conversations) ---------------------------------------
def _conversation(answer="42", **assistant) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 12 + 30?"},
            {"role": "assistant", "content": answer, **assistant},
        ]
    }


def test_chat_scoring_rules():
    # no CoT: the whole generation (the prompt ends with the empty think block), stripped
    assert scoring.score_generation(" 42\n", "42", "chat", no_cot=True) == ("42", True)
    assert scoring.score_generation("The answer is 42.", "The answer is 42.", "chat", no_cot=True)[1] is True
    assert scoring.score_generation("The answer is 42", "The answer is 42.", "chat", no_cot=True)[1] is False
    assert scoring.score_generation("42.0", "42", "chat", no_cot=True) == ("42.0", True)  # numbers within 1e-4
    assert scoring.score_generation("1,234", "1234", "chat", no_cot=True)[1] is True
    assert scoring.score_generation("42.001", "42", "chat", no_cot=True)[1] is False
    assert scoring.score_generation("43", "42", "chat", no_cot=True) == ("43", False)
    assert scoring.score_generation("  ", "42", "chat", no_cot=True) == ("", False)
    # with CoT: what follows the first closing tag
    assert scoring.score_generation("12 plus 30.\n</think>\n\n42", "42", "chat") == ("42", True)
    assert scoring.score_generation("so 42\n</think>\n\n41", "42", "chat") == ("41", False)
    assert scoring.score_generation("no tag, 42", "42", "chat") == (None, False)
    assert scoring.score_generation("r</answer> 42", "42", "chat", close_tag="</answer>") == ("42", True)
    assert scoring.has_answer(None, "chat") is False and scoring.has_answer("", "chat") is False
    assert scoring.has_answer("white", "chat") is True
    # the other formats are unchanged by the chat rule
    assert scoring.score_generation("42.0", "42", "icot", no_cot=True)[1] is False


def test_chat_examples_and_row_errors(tmp_path):
    from axolotl_maskthought.config import CoTFormatConfig

    path = tmp_path / "chat.jsonl"
    rows = [
        _conversation(reasoning_content="12 plus 30."),
        _conversation(answer="<think>\n12 plus 30.\n</think>\n\n 42 "),
        _conversation(),  # no reasoning: still scorable
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert scoring.infer_format(path) == "chat"  # a .jsonl of conversations
    examples = scoring.load_examples(path, "chat")
    assert [(e.question, e.cot, e.answer) for e in examples] == [
        ("What is 12 + 30?", "12 plus 30.", "42"),
        ("What is 12 + 30?", "12 plus 30.", "42"),
        ("What is 12 + 30?", "", "42"),
    ]
    assert examples[2].source == f"{path}: row 3"
    assert len(scoring.load_examples(path, "chat", limit=2)) == 2
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{"conv": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]))
    options = CoTFormatConfig(messages_field="conv")
    assert scoring.load_examples(sharegpt, "chat", options)[0].answer == "a"

    bad_rows = {
        "no assistant turn": {"messages": [{"role": "user", "content": "hi"}]},
        "ends with a user message": {"messages": [*_conversation()["messages"], {"role": "user", "content": "?"}]},
        "has no answer": _conversation(answer="<think>only reasoning</think>"),
        "no conversation": {"question": "q", "answer": "a"},
        "not a JSON object": ["a list"],
    }
    for expected, bad in bad_rows.items():
        broken = tmp_path / "broken.jsonl"
        broken.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=rf"^{re.escape(str(broken))}: row 3: .*{expected.split()[-1]}"):
            scoring.load_examples(broken, "chat")
