"""Command line: arguments -> one frozen Config -> run. No logic of its own.

`build_parser` gathers the subcommands of the command modules (run, merge, mock; load,
replay; report; config) in the order `--help` lists them (engine/cli/commands.py);
`main` dispatches to the handler the subcommand set and turns an EngineError into one
line on stderr and its exit code.
The modules of engine.cli import one way: main -> {run, load, report, config_cmd} ->
{run_options -> options, common, commands}; none imports main, and the command modules
not one another.

Start-up (issue 18): `main` imports only the module of the command chosen. Its parser
lists every command from the index (name and line of help), and a command's own parser
is built when argparse chooses it (`_LazyCommands`); the others, and what they import
(the load driver, the reports), are never loaded. A command module imports what its
handler needs inside the handler where it is heavy.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from engine.cli.commands import COMMANDS, command_help
from engine.cli.common import PROG, Parser, glued_message, glued_to, say
from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.cli.options import config_from_args

__all__ = ["PROG", "build_parser", "config_from_args", "main"]


def __getattr__(name: str) -> Any:
    # config_from_args is re-exported for callers of this module, and loaded when asked:
    # with the config it builds, it is the chosen command's to import (main's docstring).
    if name == "config_from_args":
        from engine.cli.options import config_from_args

        return config_from_args
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    _Commands = argparse._SubParsersAction[Parser]
else:  # argparse's class is not subscriptable at run time
    _Commands = argparse._SubParsersAction


class _LazyCommands(_Commands):
    """The subcommands, each a placeholder (its name and help) until argparse chooses
    it: then its module's function adds the real parser(s) in its place."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: set[str] = set()

    def build(self, command: str) -> None:
        if command in self.built:
            return  # (by the module of a command beside it: run adds merge and mock)
        # The module adds its parsers to a private action of the same prog, then they
        # take the placeholders' places: argparse reads this map when it parses.
        built: _Commands = argparse._SubParsersAction(
            option_strings=[], prog=self._prog_prefix, parser_class=self._parser_class
        )
        _add_parsers(COMMANDS[command][0], built)
        self._name_parser_map.update(built._name_parser_map)
        self.built.update(built._name_parser_map)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if isinstance(values, list) and values and values[0] in COMMANDS:
            self.build(values[0])
        super().__call__(parser, namespace, values, option_string)


def _add_parsers(module: str, sub: _Commands) -> None:
    """Import a command module and add its parsers: here, not at the top, so that only
    the chosen command's module loads (and test_layers sees the arrows)."""
    match module:
        case "run":
            from engine.cli import run

            run.add_parsers(sub)
        case "load":
            from engine.cli import load

            load.add_parsers(sub)
        case "report":
            from engine.cli import report

            report.add_parser(sub)
        case "config_cmd":
            from engine.cli import config_cmd

            config_cmd.add_parser(sub)
        case _:
            raise AssertionError(f"no command module {module!r}")


def build_parser(*, lazy: bool = False) -> Parser:
    """The `adbatch` parser; `lazy`: each command's parser (and module) only when it is
    chosen (main), else all of them now (a test that reads a parser's help)."""
    parser = Parser(
        prog=PROG,
        description="Fetch Criteo Retail Media ads for page-view events, fast, "
        "one JSONL record per event.",
        epilog="Try it: adbatch run --mock examples/pageviews.jsonl",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, action=_LazyCommands
    )
    assert isinstance(sub, _LazyCommands)
    for command in COMMANDS:
        sub.add_parser(command, help=command_help(command))
    for command in () if lazy else COMMANDS:
        sub.build(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The chosen command's imports (most of a 0-event run's CPU) make objects that live
    # as long as the process: the collector stays off meanwhile, then they are frozen
    # (engine/runtime/loop.py, start-up).
    enabled = gc.isenabled()
    gc.disable()
    try:
        # A closed fd 0-2 (`<&-`, `2>&-`) holds /dev/null first: a later file must not
        # take its number, and what the command needs of it is refused (files/paths.py).
        from engine.files.paths import hold_closed_streams

        hold_closed_streams()
        parser = build_parser(lazy=True)
        _option_before_command(parser, sys.argv[1:] if argv is None else list(argv))
        args, extras = parser.parse_known_args(argv)
    finally:
        from engine.runtime.loop import tune_gc

        tune_gc()
        if enabled:
            gc.enable()
    if extras:
        # argparse hands a subcommand's unknown arguments up to the top-level parser,
        # whose usage is not the one the user needs: the subcommand's says them.
        command_parser(parser, args.command).unknown(extras)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except EngineError as exc:
        say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def entry() -> NoReturn:
    """The `adbatch` command (and `python -m engine`): `main`, then the process ends
    with its code, at once when an input thread is still blocked in a read (stdin that
    stays open): the interpreter would wait for that read, and the run is over.
    A stdout or stderr whose reader goes away loses the messages, never the run's exit
    code or files (`drop_unread_messages`)."""
    from engine.files.paths import drop_unread_messages

    drop_unread_messages()
    code = main()
    from engine.runtime.readahead import left_reading

    if left_reading():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


#: The options `adbatch` itself takes, before a command.
_TOP_OPTIONS = ("-h", "--help", "--version")


def _option_before_command(parser: Parser, argv: list[str]) -> None:
    """Exit 2 when the words start with an option `adbatch` does not take: a command's
    option before its command (`adbatch --concurency 5 run`), where argparse would say
    `invalid choice: '5'`. The line names the command's option, as a command's unknown
    option does (`Parser.unknown`), and never the value (`--tokn=SECRET`)."""
    if not argv or not argv[0].startswith("-") or argv[0] == "-":
        return
    name = argv[0].partition("=")[0]
    if name in _TOP_OPTIONS:
        return
    import difflib  # (only on this error: start-up, issue 18)

    given = [word for word in argv if word in COMMANDS][:1]
    full = build_parser()  # every command's options: only on this error
    from engine.cli.options import RefuseSecret

    owner: dict[str, str] = {}  # option -> the first command (in --help's order) taking it
    valued: list[str] = []  # those that take a value (one glued to them is never shown)
    refusing: dict[str, argparse.Action] = {}  # never suggested; given, refused
    for command in given or COMMANDS:
        for action in command_parser(full, command)._actions:
            for option in action.option_strings:
                if isinstance(action, RefuseSecret):
                    refusing[option] = action
                elif option not in _TOP_OPTIONS:
                    owner.setdefault(option, command)
                    if action.nargs != 0:
                        valued.append(option)
    stuck = name if name in refusing else glued_to(name, [*valued, *refusing])
    stuck = None if name in owner else stuck  # an option of a command's, as it is
    if stuck in refusing:  # --client-secret, a value glued to it or not: its refusal
        print(parser.usage_line(), file=sys.stderr)
        refusing[stuck](parser, argparse.Namespace(), None, name)  # exit 2
    if stuck is not None:
        message = f"{glued_message(stuck)}, after the command: {PROG} {owner[stuck]} {stuck}"
    elif name in owner:
        message = f"{name} goes after the command: {PROG} {owner[name]} {name}"
    else:
        message = f"unknown option {name}; options go after the command"
        near = difflib.get_close_matches(name.lower(), list(owner), n=1)
        lists = f" ({PROG} {(given or ['COMMAND'])[0]} --help lists them)"
        message += f": did you mean {PROG} {owner[near[0]]} {near[0]}?" if near else lists
    print(parser.usage_line(), file=sys.stderr)
    parser.error(message)


def _every_valued() -> list[str]:
    """The options of every command that take a value (built only on an unknown option)."""
    full = build_parser()
    return [
        option
        for command in COMMANDS
        for action in command_parser(full, command)._actions
        if action.nargs != 0
        for option in action.option_strings
    ]


Parser.every_valued = _every_valued


def command_parser(parser: Parser, command: str) -> Parser:
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(command)
            if isinstance(found, Parser):
                return found
    return parser


if __name__ == "__main__":
    sys.exit(main())
