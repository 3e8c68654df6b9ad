"""Training-data generators and converters for chain-of-thought experiments.

Three sources, all written without network access:

* Multiplication in the official ICoT format (``question||cot #### answer``), digits
  written least significant first.  ``multiplication_line`` reproduces every line of the
  official 4x4/5x5/7x7/9x9 valid/test files from the operands alone.
* GSM8K jsonl rows converted to official ICoT GSM8K lines (the CoT is the solution's
  ``<<...>>`` calculator annotations joined by spaces).
* Small worked-arithmetic problems in GSM8K jsonl form, for the quickstart.

Also a command line, ``axolotl-maskthought generate-data {multiplication,gsm8k-to-icot,
arithmetic} ...``; ``add_subcommands`` lets a parent CLI mount the same subcommands.
This module uses the standard library only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

from axolotl_maskthought.data.files import parse_json_line, read_text_lines, write_lines

COT_SEPARATOR = "||"
ANSWER_MARKER = "####"
_ANNOTATION = re.compile(r"<<.*?>>")
_HANDLER = "maskthought_data_handler"


def int_to_reversed_digits(value: int, width: int) -> str:
    """Write ``value`` least significant digit first, zero-padded to ``width`` digits.

    ``int_to_reversed_digits(1234, 5) == "4 3 2 1 0"``.  Raises ``ValueError`` if the
    number is negative or needs more than ``width`` digits.
    """
    text = str(value)
    if value < 0 or len(text) > width:
        raise ValueError(f"{value} does not fit in {width} non-negative digits")
    return " ".join(text[::-1].ljust(width, "0"))


def reversed_digits_to_int(text: str) -> int:
    """Inverse of ``int_to_reversed_digits``: ``"4 3 2 1 0" -> 1234``."""
    digits = text.split()
    if not digits or not all(d.isdigit() and len(d) == 1 for d in digits):
        raise ValueError(f"not a space-separated digit string: {text!r}")
    return int("".join(reversed(digits)))


def multiplication_line(a: int, b: int, a_digits: int, b_digits: int) -> str:
    """One multiplication example in the official ICoT format.

    Partial product ``j`` is ``a`` times digit ``j`` of ``b`` (least significant first),
    written with ``a_digits + 1`` digits after ``j`` shift zeros.  Every partial product
    except the first and the last is followed by the running sum in parentheses, with
    the same width.  The answer has ``a_digits + b_digits`` digits.  Operands narrower
    than their digit count are zero-padded (the official files never contain such).
    """
    if a_digits < 1 or b_digits < 1:
        raise ValueError("digit counts must be at least 1")
    question = f"{int_to_reversed_digits(a, a_digits)} * {int_to_reversed_digits(b, b_digits)}"
    steps = []
    running = 0
    for j, digit in enumerate(int(d) for d in str(b).zfill(b_digits)[::-1]):
        partial = a * digit * 10**j
        running += partial
        width = a_digits + 1 + j
        step = int_to_reversed_digits(partial, width)
        if 0 < j < b_digits - 1:
            step += f" ( {int_to_reversed_digits(running, width)} )"
        steps.append(step)
    answer = int_to_reversed_digits(a * b, a_digits + b_digits)
    return f"{question}{COT_SEPARATOR}{' + '.join(steps)} {ANSWER_MARKER} {answer}"


def _digit_counts(question: str) -> tuple[int, int] | None:
    try:
        return parse_multiplication_question(question)[2:]
    except ValueError:
        return None


def parse_multiplication_question(question: str) -> tuple[int, int, int, int]:
    """Operands and digit counts of a question like ``"5 6 3 2 * 7 4 3 4"``.

    Returns ``(a, b, a_digits, b_digits)``, suitable for ``multiplication_line``.
    """
    left, sep, right = question.partition(" * ")
    if not sep:
        raise ValueError(f"not a multiplication question: {question!r}")
    return (
        reversed_digits_to_int(left),
        reversed_digits_to_int(right),
        len(left.split()),
        len(right.split()),
    )


def generate_multiplication(
    a_digits: int, b_digits: int, count: int, seed: int, distinct: bool = False, exclude: Iterable[str] = ()
) -> list[str]:
    """``count`` random multiplication lines, deterministic in ``seed``.

    Operands are uniform over numbers with exactly the given digit counts (leading digit
    1-9), matching the official valid/test files. With ``distinct`` no question repeats
    (sampling without replacement; on 2x2, with 8,100 questions in all, drawing with
    replacement repeats about a third of 6,400 draws). ``exclude``: ICoT lines or bare
    questions (the text before ``||``) never drawn, e.g. a training file when writing a
    held-out test file. Raises ``ValueError`` on a digit count below 1, a negative ``count``,
    or more lines asked for than there are questions left to draw.
    """
    if a_digits < 1 or b_digits < 1:
        raise ValueError("digit counts must be at least 1")
    if count < 0:
        raise ValueError("count must be non-negative")
    excluded = {line.split(COT_SEPARATOR, 1)[0].strip() for line in exclude}
    space = 9 * 10 ** (a_digits - 1) * 9 * 10 ** (b_digits - 1)
    left = space - sum(1 for question in excluded if _digit_counts(question) == (a_digits, b_digits))
    if count and (left <= 0 or (distinct and count > left)):
        what = "distinct " if distinct else ""
        raise ValueError(
            f"count {count} exceeds the {max(left, 0)} {what}{a_digits}x{b_digits} questions left "
            f"({space} in all, {len(excluded)} excluded)"
        )
    rng = random.Random(seed)
    lines, seen = [], set()
    while len(lines) < count:
        a = rng.randint(10 ** (a_digits - 1), 10**a_digits - 1)
        b = rng.randint(10 ** (b_digits - 1), 10**b_digits - 1)
        line = multiplication_line(a, b, a_digits, b_digits)
        question = line.split(COT_SEPARATOR, 1)[0]
        if question in excluded or (distinct and question in seen):
            continue
        seen.add(question)
        lines.append(line)
    return lines


def gsm8k_row_to_icot(question: str, answer: str) -> str:
    """Convert one GSM8K row to an official ICoT GSM8K line.

    The CoT is the solution's ``<<...>>`` annotations joined by single spaces; the answer
    is the text after ``####``, stripped (commas kept, as in the official files).
    Newlines in the question become spaces so the result stays one line.  Raises
    ``ValueError`` on an empty question or answer, a missing ``####``, or a question
    containing ``||``.
    """
    question = question.replace("\r\n", " ").replace("\n", " ")
    if not question.strip():
        raise ValueError("empty question")
    if COT_SEPARATOR in question:
        raise ValueError(f"question contains {COT_SEPARATOR!r}")
    solution, marker, final = answer.rpartition(ANSWER_MARKER)
    if not marker:
        raise ValueError(f"answer has no {ANSWER_MARKER!r}")
    if not final.strip():
        raise ValueError(f"nothing after {ANSWER_MARKER!r}")
    cot = " ".join(_ANNOTATION.findall(solution))
    return f"{question}{COT_SEPARATOR}{cot} {ANSWER_MARKER} {final.strip()}"


def gsm8k_jsonl_to_icot_lines(src: str | Path, skip_invalid: bool = False) -> tuple[list[str], int]:
    """ICoT lines of a GSM8K jsonl file (``question``/``answer`` rows) and the number of rows
    skipped (bad rows raise ``ValueError`` naming the file and 1-based row unless ``skip_invalid``)."""
    lines = []
    skipped = 0
    for row_number, raw in read_text_lines(src):
        try:
            row = parse_json_line(src, row_number, raw, require_object=True)
            try:
                lines.append(gsm8k_row_to_icot(str(row.get("question", "")), str(row.get("answer", ""))))
            except ValueError as error:
                raise ValueError(f"{src}: row {row_number}: {error}") from error
        except ValueError:
            if not skip_invalid:
                raise
            skipped += 1
    return lines, skipped


def convert_gsm8k_jsonl(src: str | Path, dst: str | Path, skip_invalid: bool = False) -> int:
    """Convert a GSM8K jsonl file (``question``/``answer`` rows) to ICoT lines in ``dst``.

    Returns the number of rows skipped (always 0 unless ``skip_invalid``).  Without
    ``skip_invalid`` a bad row (invalid JSON, empty question, no ``####``) raises
    ``ValueError`` naming the file and 1-based row, and ``dst`` is not written.  Blank
    lines are ignored.
    """
    lines, skipped = gsm8k_jsonl_to_icot_lines(src, skip_invalid)
    write_lines(dst, lines)
    return skipped


def generate_arithmetic(count: int, seed: int, terms: int = 3, max_value: int = 50) -> list[dict]:
    """``count`` worked addition/subtraction problems as GSM8K-style rows.

    Each row is ``{"question": "What is 23 + 45 - 12?", "answer": "23 + 45 = 68\\n68 -
    12 = 56\\n#### 56"}``.  Numbers are drawn from 1..``max_value``; a subtraction is
    only chosen when it keeps the running total non-negative.  Deterministic in ``seed``.
    """
    if terms < 2:
        raise ValueError("terms must be at least 2")
    if max_value < 1:
        raise ValueError("max_value must be at least 1")
    if count < 0:
        raise ValueError("count must be non-negative")
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        total = rng.randint(1, max_value)
        expression = str(total)
        steps = []
        for _ in range(terms - 1):
            value = rng.randint(1, max_value)
            op = "-" if value <= total and rng.random() < 0.5 else "+"
            result = total - value if op == "-" else total + value
            steps.append(f"{total} {op} {value} = {result}")
            expression += f" {op} {value}"
            total = result
        steps.append(f"{ANSWER_MARKER} {total}")
        rows.append({"question": f"What is {expression}?", "answer": "\n".join(steps)})
    return rows
