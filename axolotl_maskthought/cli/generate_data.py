"""``axolotl-maskthought generate-data``: multiplication and arithmetic problems, GSM8K to ICoT lines.

Argument parsing only; the generators are :mod:`axolotl_maskthought.data.generators`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from axolotl_maskthought.data.files import read_text_lines, write_jsonl, write_lines
from axolotl_maskthought.data.generators import (
    _HANDLER,
    generate_arithmetic,
    generate_multiplication,
    gsm8k_jsonl_to_icot_lines,
)


def _run_multiplication(args: argparse.Namespace) -> str:
    b_digits = args.digits if args.digits_b is None else args.digits_b
    exclude = []
    for path in args.exclude or ():
        exclude += [line for _, line in read_text_lines(path)]
    lines = generate_multiplication(args.digits, b_digits, args.count, args.seed, args.distinct, exclude)
    written = write_lines(args.output, lines)
    return f"wrote {written} {args.digits}x{b_digits} multiplication examples to {args.output}"


def _run_gsm8k_to_icot(args: argparse.Namespace) -> str:
    lines, skipped = gsm8k_jsonl_to_icot_lines(args.input, args.skip_invalid)
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
    mult = subparsers.add_parser("multiplication", help="multiplication in the ICoT format")
    mult.add_argument("--digits", type=int, required=True, help="digits of a")
    mult.add_argument("--digits-b", type=int, help="digits of b (default: --digits)")
    mult.add_argument("--count", type=int, required=True, help="number of lines")
    mult.add_argument("--seed", type=int, default=0, help="random seed of the operands (default: %(default)s)")
    mult.add_argument("--distinct", action="store_true", help="no question twice (sample without replacement)")
    mult.add_argument(
        "--exclude",
        action="append",
        metavar="FILE",
        help="never draw a question of this ICoT file, e.g. the training file when writing a test file (repeatable)",
    )
    mult.add_argument("--output", required=True, help="output .txt file")
    mult.set_defaults(**{_HANDLER: _run_multiplication})

    gsm = subparsers.add_parser("gsm8k-to-icot", help="convert GSM8K jsonl to ICoT lines")
    gsm.add_argument("--input", required=True, help="GSM8K .jsonl file")
    gsm.add_argument("--output", required=True, help="output .txt file")
    gsm.add_argument("--skip-invalid", action="store_true", help="skip bad rows instead of failing")
    gsm.set_defaults(**{_HANDLER: _run_gsm8k_to_icot})

    arith = subparsers.add_parser("arithmetic", help="worked arithmetic problems as GSM8K jsonl")
    arith.add_argument("--count", type=int, required=True, help="number of problems")
    arith.add_argument("--seed", type=int, default=0, help="random seed of the problems (default: %(default)s)")
    arith.add_argument("--output", required=True, help="output .jsonl file")
    arith.add_argument("--terms", type=int, default=3, help="numbers per problem, at least 2 (default: %(default)s)")
    arith.add_argument(
        "--max-value", type=int, default=50, help="numbers are drawn from 1..MAX_VALUE (default: %(default)s)"
    )
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
    """The standalone ``axolotl-maskthought generate-data`` parser."""
    parser = argparse.ArgumentParser(
        prog="axolotl-maskthought generate-data",
        description="Generate or convert chain-of-thought training data.",
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    return run_subcommand(build_parser().parse_args(argv))
