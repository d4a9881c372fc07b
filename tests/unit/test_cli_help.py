"""`--help` on every command: each option says what it does and what it is when left out."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from npcforge.cli import build_parser

_NO_DEFAULT = (None, False, argparse.SUPPRESS)


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def test_every_command_and_option_has_a_description_and_its_default() -> None:
    problems = []
    commands = list(_parsers(build_parser()))
    assert len(commands) >= 17  # npcforge, 10 commands, 3 groups, jobs list/retry/cancel, ...
    for path, parser in commands:
        where = " ".join(("npcforge", *path))
        if not parser.description:
            problems.append(f"{where}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                problems += [
                    f"{where} {choice.dest}: no summary"
                    for choice in action._choices_actions
                    if not choice.help
                ]
                continue
            name = "/".join(action.option_strings) or str(action.metavar)
            if not action.help:
                problems.append(f"{where} {name}: no help")
                continue
            if action.option_strings and "(default: " not in action.help:
                problems.append(f"{where} {name}: the help does not give the default")
            if action.default not in _NO_DEFAULT and "%(default)s" not in action.help:
                problems.append(f"{where} {name}: the default {action.default!r} is not shown")
    assert problems == []


def test_the_help_text_renders_with_the_defaults() -> None:
    parser = dict(_parsers(build_parser()))
    assert "(default: 8080)" in parser[("api",)].format_help()
    assert "(default: 50)" in parser[("jobs", "list")].format_help()
    assert "NPC_ID" in parser[("enqueue",)].format_help()
