"""``axolotl-maskthought`` (also ``python -m axolotl_maskthought``).

Subcommands live in their own modules, each exposing ``register(subparsers)``
that adds its parser with ``set_defaults(func=...)``; ``func(args) -> int``.
Heavy imports happen inside the commands, so ``--help`` answers at once.
Errors print one line naming the file (and row) and exit 2; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "axolotl_maskthought.cli.eval",  # eval, score
    "axolotl_maskthought.cli.schedule",  # schedule
    "axolotl_maskthought.cli.quickstart",  # quickstart
)


class CommandError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="axolotl-maskthought",
        description="Masked Thought and Stepwise Internalization for axolotl: evaluate, plan, generate data.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.register(commands)
    generate = commands.add_parser("generate-data", help="generate multiplication / arithmetic data, convert GSM8K")
    from axolotl_maskthought.cli import generate_data

    generate_data.add_subcommands(generate.add_subparsers(dest="kind", required=True))
    generate.set_defaults(func=generate_data.run_subcommand)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, FileNotFoundError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
