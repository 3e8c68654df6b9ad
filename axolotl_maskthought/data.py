"""Training-data generators and converters for chain-of-thought experiments.

Three sources, all written without network access:

* Multiplication in the official ICoT format (``question||cot #### answer``), digits
  written least significant first.  ``multiplication_line`` reproduces every line of the
  official 4x4/5x5/7x7/9x9 valid/test files from the operands alone.
* GSM8K jsonl rows converted to official ICoT GSM8K lines (the CoT is the solution's
  ``<<...>>`` calculator annotations joined by spaces).
* Small worked-arithmetic problems in GSM8K jsonl form, for the quickstart.

Also a command line, ``python -m axolotl_maskthought.data {multiplication,gsm8k-to-icot,
arithmetic} ...``; ``add_subcommands`` lets a parent CLI mount the same subcommands.
This module uses the standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import formats

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
    question = (
        f"{int_to_reversed_digits(a, a_digits)} * {int_to_reversed_digits(b, b_digits)}"
    )
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
    a_digits: int, b_digits: int, count: int, seed: int
) -> list[str]:
    """``count`` random multiplication lines, deterministic in ``seed``.

    Operands are uniform over numbers with exactly the given digit counts (leading digit
    1-9), matching the official valid/test files.
    """
    if a_digits < 1 or b_digits < 1:
        raise ValueError("digit counts must be at least 1")
    if count < 0:
        raise ValueError("count must be non-negative")
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        a = rng.randint(10 ** (a_digits - 1), 10**a_digits - 1)
        b = rng.randint(10 ** (b_digits - 1), 10**b_digits - 1)
        lines.append(multiplication_line(a, b, a_digits, b_digits))
    return lines


def parse_icot_line(line: str) -> tuple[str, str, str]:
    """Split ``question||cot #### answer`` into stripped ``(question, cot, answer_text)``.

    A thin tuple view of :func:`axolotl_maskthought.formats.parse_icot_line`, which
    raises ``ValueError`` when a separator is missing or the question or answer is empty.
    """
    example = formats.parse_icot_line(line)
    return example.question, example.cot, example.answer


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


def _read_gsm8k_jsonl(src: str | Path, skip_invalid: bool) -> tuple[list[str], int]:
    """ICoT lines of a GSM8K jsonl file and the number of rows skipped."""
    lines = []
    skipped = 0
    with open(src, encoding="utf-8") as handle:
        for row_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                if not isinstance(row, dict):
                    raise ValueError("row is not a JSON object")
                lines.append(
                    gsm8k_row_to_icot(
                        str(row.get("question", "")), str(row.get("answer", ""))
                    )
                )
            except ValueError as error:
                if not skip_invalid:
                    raise ValueError(f"{src}: row {row_number}: {error}") from error
                skipped += 1
    return lines, skipped


def convert_gsm8k_jsonl(
    src: str | Path, dst: str | Path, skip_invalid: bool = False
) -> int:
    """Convert a GSM8K jsonl file (``question``/``answer`` rows) to ICoT lines in ``dst``.

    Returns the number of rows skipped (always 0 unless ``skip_invalid``).  Without
    ``skip_invalid`` a bad row (invalid JSON, empty question, no ``####``) raises
    ``ValueError`` naming the file and 1-based row, and ``dst`` is not written.  Blank
    lines are ignored.
    """
    lines, skipped = _read_gsm8k_jsonl(src, skip_invalid)
    write_lines(dst, lines)
    return skipped


def generate_arithmetic(
    count: int, seed: int, terms: int = 3, max_value: int = 50
) -> list[dict]:
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


def write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Write one line per item (newline-terminated, UTF-8), creating parent directories.

    Returns the number of lines written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")
            written += 1
    return written


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped), at most ``limit``."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines; returns the number written."""
    return write_lines(path, (json.dumps(row, ensure_ascii=False) for row in rows))


def _run_multiplication(args: argparse.Namespace) -> str:
    b_digits = args.digits if args.digits_b is None else args.digits_b
    lines = generate_multiplication(args.digits, b_digits, args.count, args.seed)
    written = write_lines(args.output, lines)
    return (
        f"wrote {written} {args.digits}x{b_digits} multiplication examples "
        f"to {args.output}"
    )


def _run_gsm8k_to_icot(args: argparse.Namespace) -> str:
    lines, skipped = _read_gsm8k_jsonl(args.input, args.skip_invalid)
    written = write_lines(args.output, lines)
    note = f" (skipped {skipped} invalid rows)" if args.skip_invalid else ""
    return f"wrote {written} ICoT lines to {args.output}{note}"


def _run_arithmetic(args: argparse.Namespace) -> str:
    rows = generate_arithmetic(args.count, args.seed, args.terms, args.max_value)
    written = write_jsonl(args.output, rows)
    return f"wrote {written} arithmetic rows to {args.output}"


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``multiplication``, ``gsm8k-to-icot`` and ``arithmetic`` on ``subparsers``.

    A parent CLI mounts them with
    ``add_subcommands(parser.add_subparsers(dest=..., required=True))`` and, after
    parsing, calls ``run_subcommand(args)``, which returns the exit code.
    """
    mult = subparsers.add_parser(
        "multiplication", help="multiplication in the ICoT format"
    )
    mult.add_argument("--digits", type=int, required=True, help="digits of a")
    mult.add_argument("--digits-b", type=int, help="digits of b (default: --digits)")
    mult.add_argument("--count", type=int, required=True)
    mult.add_argument("--seed", type=int, default=0)
    mult.add_argument("--output", required=True, help="output .txt file")
    mult.set_defaults(**{_HANDLER: _run_multiplication})

    gsm = subparsers.add_parser(
        "gsm8k-to-icot", help="convert GSM8K jsonl to ICoT lines"
    )
    gsm.add_argument("--input", required=True, help="GSM8K .jsonl file")
    gsm.add_argument("--output", required=True, help="output .txt file")
    gsm.add_argument(
        "--skip-invalid", action="store_true", help="skip bad rows instead of failing"
    )
    gsm.set_defaults(**{_HANDLER: _run_gsm8k_to_icot})

    arith = subparsers.add_parser(
        "arithmetic", help="worked arithmetic problems as GSM8K jsonl"
    )
    arith.add_argument("--count", type=int, required=True)
    arith.add_argument("--seed", type=int, default=0)
    arith.add_argument("--output", required=True, help="output .jsonl file")
    arith.add_argument("--terms", type=int, default=3)
    arith.add_argument("--max-value", type=int, default=50)
    arith.set_defaults(**{_HANDLER: _run_arithmetic})


def run_subcommand(args: argparse.Namespace) -> int:
    """Run the subcommand chosen in ``args``: 0 on success, 2 with one stderr line on error."""
    try:
        print(getattr(args, _HANDLER)(args))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The standalone ``python -m axolotl_maskthought.data`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m axolotl_maskthought.data",
        description="Generate or convert chain-of-thought training data.",
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    return run_subcommand(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
