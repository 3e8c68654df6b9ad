"""Tests for axolotl_maskthought.data: generators, converters and the data CLI."""

from __future__ import annotations

import json
import re
from dataclasses import astuple
from pathlib import Path

import pytest

from axolotl_maskthought.cli import generate_data as data_cli
from axolotl_maskthought.data import files
from axolotl_maskthought.data import generators as data
from axolotl_maskthought.data.formats import parse_icot_line

MULT_FILES = [f"{n}_by_{n}_mult/{split}.txt" for n in (4, 5, 7, 9) for split in ("valid", "test_bigbench")]
GSM8K_TEST_EXACT_MATCH = 1.0


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("name", MULT_FILES)
def test_multiplication_reproduces_official_file(shared_data: Path, name: str) -> None:
    lines = _read_lines(shared_data / "icot" / name)
    assert len(lines) == 1000
    for line in lines:
        question, _, _ = astuple(parse_icot_line(line))
        a, b, a_digits, b_digits = data.parse_multiplication_question(question)
        assert data.multiplication_line(a, b, a_digits, b_digits) == line


def test_multiplication_line_example() -> None:
    line = data.multiplication_line(2365, 4347, 4, 4)
    assert line == (
        "5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + "
        "0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 ) + 0 0 0 0 6 4 9 0 #### 5 5 6 0 8 2 0 1"
    )


def test_multiplication_mixed_digit_counts() -> None:
    line = data.multiplication_line(123, 45, 3, 2)
    _, cot, answer = astuple(parse_icot_line(line))
    assert "(" not in cot
    assert cot == "5 1 6 0 + 0 2 9 4 0"
    assert data.reversed_digits_to_int(answer) == 123 * 45
    assert len(answer.split()) == 5


def test_reversed_digits_round_trip_and_overflow() -> None:
    assert data.int_to_reversed_digits(1234, 5) == "4 3 2 1 0"
    assert data.reversed_digits_to_int("4 3 2 1 0") == 1234
    with pytest.raises(ValueError):
        data.int_to_reversed_digits(12345, 4)
    with pytest.raises(ValueError):
        data.reversed_digits_to_int("4 x 2")


@pytest.mark.parametrize(("a_digits", "b_digits"), [(4, 4), (5, 5), (3, 6), (9, 9)])
def test_generated_multiplication(a_digits: int, b_digits: int) -> None:
    lines = data.generate_multiplication(a_digits, b_digits, 200, seed=7)
    assert lines == data.generate_multiplication(a_digits, b_digits, 200, seed=7)
    assert lines != data.generate_multiplication(a_digits, b_digits, 200, seed=8)
    assert len(lines) == 200
    for line in lines:
        question, cot, answer = astuple(parse_icot_line(line))
        left, right = question.split(" * ")
        assert len(left.split()) == a_digits and len(right.split()) == b_digits
        assert left.split()[-1] != "0" and right.split()[-1] != "0"
        a, b = data.reversed_digits_to_int(left), data.reversed_digits_to_int(right)
        assert len(answer.split()) == a_digits + b_digits
        assert data.reversed_digits_to_int(answer) == a * b
        assert cot.count(" + ") == b_digits - 1


def test_generate_multiplication_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        data.generate_multiplication(0, 4, 10, seed=0)
    with pytest.raises(ValueError):
        data.generate_multiplication(4, 4, -1, seed=0)


def test_generate_multiplication_distinct() -> None:
    """2x2 has 8,100 questions: 6,400 draws with replacement repeat many; distinct ones none."""
    question = lambda line: line.split("||", 1)[0]  # noqa: E731
    repeated = data.generate_multiplication(2, 2, 6400, seed=0)
    assert len({question(line) for line in repeated}) < 5000
    lines = data.generate_multiplication(2, 2, 6400, seed=0, distinct=True)
    assert len({question(line) for line in lines}) == 6400
    assert lines == data.generate_multiplication(2, 2, 6400, seed=0, distinct=True)
    assert len(data.generate_multiplication(1, 1, 81, seed=0, distinct=True)) == 81
    with pytest.raises(ValueError, match="exceeds the 81 distinct 1x1"):
        data.generate_multiplication(1, 1, 82, seed=0, distinct=True)


def test_cli_multiplication_distinct_and_exclude(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The held-out recipe of the examples: a distinct training file, then a test file that shares none of
    its questions; asking for more than is left fails with a message naming the counts."""
    question = lambda line: line.split("||", 1)[0]  # noqa: E731
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    assert (
        data_cli.main(["multiplication", "--digits", "1", "--count", "70", "--distinct", "--output", str(train)]) == 0
    )
    argv = ["multiplication", "--digits", "1", "--count", "11", "--distinct", "--seed", "1", "--exclude", str(train)]
    assert data_cli.main([*argv, "--output", str(test)]) == 0
    train_q, test_q = {question(x) for x in _read_lines(train)}, {question(x) for x in _read_lines(test)}
    assert len(train_q) == 70 and len(test_q) == 11 and not train_q & test_q
    capsys.readouterr()
    argv[4] = "12"
    assert data_cli.main([*argv, "--output", str(tmp_path / "more.txt")]) == 2
    assert "exceeds the 11 distinct 1x1 questions left (81 in all, 70 excluded)" in capsys.readouterr().err
    assert not (tmp_path / "more.txt").exists()


def test_parse_icot_line() -> None:
    assert astuple(parse_icot_line("q ||<<1+1=2>> #### 2\n")) == ("q", "<<1+1=2>>", "2")
    assert astuple(parse_icot_line("q|| #### 7")) == ("q", "", "7")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("question <<1+1=2>> #### 2", "`||`"),
        ("question||<<1+1=2>> 2", "`####`"),
        ("  ||<<1+1=2>> #### 2", "empty question"),
    ],
)
def test_parse_icot_line_errors(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_icot_line(line)


def test_gsm8k_row_to_icot() -> None:
    answer = "He has 2+3=<<2+3=5>>5 apples\nThen 5*2=<<5*2=10>>10\n#### 1,000"
    assert data.gsm8k_row_to_icot("How many?", answer) == ("How many?||<<2+3=5>> <<5*2=10>> #### 1,000")
    assert data.gsm8k_row_to_icot("Q", "no annotations\n#### 4") == "Q|| #### 4"
    with pytest.raises(ValueError, match="####"):
        data.gsm8k_row_to_icot("Q", "no marker")
    with pytest.raises(ValueError, match="empty question"):
        data.gsm8k_row_to_icot("  ", "#### 4")


def test_gsm8k_converter_matches_official_test_file(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "test.txt"
    assert data.convert_gsm8k_jsonl(shared_data / "gsm8k" / "test.jsonl", out) == 0
    ours = _read_lines(out)
    official = _read_lines(shared_data / "icot" / "gsm8k" / "test.txt")
    assert len(ours) == len(official) == 1319
    matches = sum(a == b for a, b in zip(ours, official))
    assert matches / len(official) >= GSM8K_TEST_EXACT_MATCH - 0.002


def test_gsm8k_converter_matches_official_valid_lines(shared_data: Path) -> None:
    train = shared_data / "gsm8k" / "train.jsonl"
    converted = {
        data.gsm8k_row_to_icot(row["question"], row["answer"])
        for row in map(json.loads, train.read_text(encoding="utf-8").splitlines())
    }
    valid = _read_lines(shared_data / "icot" / "gsm8k" / "valid.txt")
    assert len(valid) == 500
    assert all(line in converted for line in valid)


def _write_gsm8k(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
        encoding="utf-8",
    )
    return path


GOOD = {"question": "What is 1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}
NO_MARKER = {"question": "What is 2+2?", "answer": "2+2=<<2+2=4>>4"}
NO_QUESTION = {"question": "", "answer": "#### 3"}


def test_gsm8k_converter_error_names_file_and_row(tmp_path: Path) -> None:
    src = _write_gsm8k(tmp_path / "bad.jsonl", [GOOD, GOOD, NO_MARKER])
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 3: .*####"):
        data.convert_gsm8k_jsonl(src, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    src = _write_gsm8k(tmp_path / "empty.jsonl", [NO_QUESTION])
    with pytest.raises(ValueError, match=r"empty\.jsonl: row 1: empty question"):
        data.convert_gsm8k_jsonl(src, tmp_path / "out.txt")


def test_gsm8k_converter_skip_invalid(tmp_path: Path) -> None:
    rows = [GOOD, NO_MARKER, "{not json", GOOD, NO_QUESTION, ""]
    src = _write_gsm8k(tmp_path / "mixed.jsonl", rows)
    out = tmp_path / "out.txt"
    assert data.convert_gsm8k_jsonl(src, out, skip_invalid=True) == 3
    assert _read_lines(out) == ["What is 1+1?||<<1+1=2>> #### 2"] * 2


def _check_arithmetic_row(row: dict, terms: int) -> None:
    question, answer = row["question"], row["answer"]
    expression = re.fullmatch(r"What is ([\d +-]+)\?", question).group(1)
    assert len(expression.split()) == 2 * terms - 1
    *steps, final = answer.split("\n")
    assert len(steps) == terms - 1
    for step in steps:
        left, right = step.split(" = ")
        assert eval(left) == int(right)
    assert final == f"#### {eval(expression)}"


@pytest.mark.parametrize("terms", [2, 3, 5])
def test_generate_arithmetic(terms: int) -> None:
    rows = data.generate_arithmetic(100, seed=3, terms=terms)
    assert rows == data.generate_arithmetic(100, seed=3, terms=terms)
    assert rows != data.generate_arithmetic(100, seed=4, terms=terms)
    for row in rows:
        _check_arithmetic_row(row, terms)
        assert data.gsm8k_row_to_icot(row["question"], row["answer"]).endswith(row["answer"].split("\n")[-1])


def test_generate_arithmetic_example_shape() -> None:
    row = data.generate_arithmetic(1, seed=0)[0]
    assert set(row) == {"question", "answer"}
    assert row["question"].startswith("What is ")
    with pytest.raises(ValueError):
        data.generate_arithmetic(1, seed=0, terms=1)


def test_cli_multiplication(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "mult.txt"
    argv = ["multiplication", "--digits", "4", "--digits-b", "5"]
    code = data_cli.main([*argv, "--count", "20", "--seed", "1", "--output", str(out)])
    assert code == 0
    assert _read_lines(out) == data.generate_multiplication(4, 5, 20, seed=1)
    printed = capsys.readouterr().out.strip()
    assert "20" in printed and str(out) in printed and "\n" not in printed


def test_cli_gsm8k_to_icot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _write_gsm8k(tmp_path / "in.jsonl", [GOOD, NO_MARKER])
    out = tmp_path / "out.txt"
    argv = ["gsm8k-to-icot", "--input", str(src), "--output", str(out)]
    assert data_cli.main([*argv, "--skip-invalid"]) == 0
    assert _read_lines(out) == ["What is 1+1?||<<1+1=2>> #### 2"]
    printed = capsys.readouterr().out
    assert "1" in printed and str(out) in printed and "skipped 1" in printed

    out.unlink()
    assert data_cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "in.jsonl: row 2" in captured.err and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.jsonl"
    argv = ["gsm8k-to-icot", "--input", str(missing), "--output", str(tmp_path / "o")]
    assert data_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl" in err and len(err.strip().splitlines()) == 1


def test_cli_arithmetic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "arith.jsonl"
    argv = ["arithmetic", "--count", "15", "--seed", "2", "--terms", "4"]
    assert data_cli.main([*argv, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in _read_lines(out)]
    assert rows == data.generate_arithmetic(15, seed=2, terms=4)
    for row in rows:
        _check_arithmetic_row(row, 4)
    assert str(out) in capsys.readouterr().out


def test_cli_bad_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["multiplication", "--digits", "4", "--count", "-1"]
    assert data_cli.main([*argv, "--output", str(tmp_path / "m.txt")]) == 2
    assert "count" in capsys.readouterr().err


def test_add_subcommands_mounts_under_parent_cli(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="axolotl-maskthought")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate-data")
    data_cli.add_subcommands(generate.add_subparsers(dest="kind", required=True))
    out = tmp_path / "m.txt"
    args = parser.parse_args(
        ["generate-data", "multiplication", "--digits", "4", "--count", "3"] + ["--output", str(out)]
    )
    assert data_cli.run_subcommand(args) == 0
    assert len(_read_lines(out)) == 3


def test_read_jsonl_round_trip_skips_blank_lines_and_stops_at_limit(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": f"a #### {i}"} for i in range(5)]
    path = tmp_path / "rows.jsonl"
    assert files.write_jsonl(path, rows) == 5
    path.write_text(path.read_text().replace("\n", "\n\n", 2))  # blank lines between rows
    assert files.read_jsonl(path) == rows
    assert files.read_jsonl(path, limit=3) == rows[:3]
    assert files.read_jsonl(path, limit=0) == []


def test_one_reader_per_file_kind_names_file_and_row(tmp_path: Path) -> None:
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"a": 1}\n\n[1]\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(lines))}: row 4: not valid JSON"):
        list(files.read_jsonl_rows(lines))
    assert list(files.read_jsonl_rows(lines, limit=2)) == [(1, {"a": 1}), (3, [1])]
    with pytest.raises(ValueError, match=rf"^{re.escape(str(lines))}: row 3: not a JSON object"):
        list(files.read_jsonl_rows(lines, require_object=True))

    array = tmp_path / "rows.json"
    array.write_text('  [{"a": 1},\n {"a": 2}]', encoding="utf-8")
    assert files.read_rows(array) == [(1, {"a": 1}), (2, {"a": 2})]
    assert files.count_rows(array) == 2
    broken = tmp_path / "broken.json"
    broken.write_text('[{"a": 1},', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(broken))}: not a valid JSON array"):
        files.count_rows(broken)

    text = tmp_path / "rows.txt"
    text.write_text("q||c #### 1\n\n  \nq2|| #### 2", encoding="utf-8")
    assert files.read_rows(text) == [(1, {"text": "q||c #### 1"}), (4, {"text": "q2|| #### 2"})]
    assert files.count_rows(text) == 2
    with pytest.raises(FileNotFoundError, match=r"absent\.txt: no such file"):
        list(files.read_text_lines(tmp_path / "absent.txt"))
