"""Command line: arguments -> one frozen Config -> run. No logic of its own.

`build_parser` gathers the subcommands of the command modules (run, merge, mock; load,
replay; report) in the order `--help` lists them; `main` dispatches to the handler the
subcommand set and turns an EngineError into one line on stderr and its exit code.
The modules of engine.cli import one way: main -> {run, load, report} -> {run_options ->
options, common}; none imports main, and the command modules not one another.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from engine.cli import config_cmd, load, report, run
from engine.cli.common import PROG, Parser, say
from engine.cli.options import config_from_args
from engine.errors import EngineError

__all__ = ["PROG", "build_parser", "config_from_args", "main"]


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Fetch Criteo Retail Media ads for page-view events, fast, "
        "one JSONL record per event.",
        epilog="Try it: adbatch run --mock examples/pageviews.jsonl",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parsers(sub)
    load.add_parsers(sub)
    report.add_parser(sub)
    config_cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # argparse hands a subcommand's unknown arguments up to the top-level parser,
        # whose usage is not the one the user needs: the subcommand's says them.
        _command_parser(parser, args.command).unknown(extras)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except EngineError as exc:
        say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def _command_parser(parser: Parser, command: str) -> Parser:
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(command)
            if isinstance(found, Parser):
                return found
    return parser


if __name__ == "__main__":
    sys.exit(main())
