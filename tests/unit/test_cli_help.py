"""Every option of every `axolotl-maskthought` command has help text, and `--help` shows
the default of each option that has one (issue 18)."""

from __future__ import annotations

import argparse
import re

import pytest

from axolotl_maskthought.cli import build_parser, generate_data

# Flags: their default is the flag's absence, not a value a user would set.
FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)


def _parsers(parser: argparse.ArgumentParser, path: str):
    """(command path, parser) for ``parser`` and every subparser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _parsers(subparser, f"{path} {name}")


def _all_parsers():
    return [*_parsers(build_parser(), "axolotl-maskthought"), *_parsers(generate_data.build_parser(), "generate-data")]


def _options(parser):
    return [action for action in parser._actions if not isinstance(action, argparse._SubParsersAction)]


def _help_entry(help_text: str, action: argparse.Action) -> str:
    """The text --help prints for ``action``: its invocation line to the next entry, on one line."""
    invocation = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(invocation)}\b", line))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if re.match(r"\s{2}\S", line) and not re.match(r"\s{3,}", line) or not line.strip():
            break  # the next entry (two-space indent) or the end of the section
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_every_command_is_walked():
    commands = {path for path, _ in _all_parsers()}
    for expected in ("eval", "score", "schedule", "quickstart", "generate-data multiplication"):
        assert f"axolotl-maskthought {expected}" in commands, sorted(commands)


@pytest.mark.parametrize("path, parser", _all_parsers(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_option_has_help_and_shows_its_default(path, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    help_text = parser.format_help()
    for action in _options(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"`{path} {name}` has no help text"
        if action.default is None or action.default is argparse.SUPPRESS or isinstance(action, FLAG_ACTIONS):
            continue
        entry = _help_entry(help_text, action)
        assert f"default: {action.default}" in entry, f"`{path} --help` does not show {name}'s default: {entry!r}"
