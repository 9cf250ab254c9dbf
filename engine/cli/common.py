"""What every command does the same way: its name in messages, small files, the event loop.

Imports no other module of engine.cli, so every command module may import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NoReturn, TypeAlias

import orjson

from engine.core.values import terminal_safe
from engine.errors import OutputError
from engine.version import __version__

PROG = "adbatch"

#: What `add_subparsers` returns: each command module adds its subcommands to it. A
#: string, as argparse's class is not subscriptable at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


class Parser(argparse.ArgumentParser):
    """argparse without its surprises: no prefix matching (`--rat 5` is not `--rate 5`),
    `--version`, and a usage error in one line, not a usage dump; an unknown option gets
    the command's usage line and the nearest option. `add_subparsers` makes its
    subcommands of this class too.
    """

    #: Every command's options that take a value (cli/main.py sets it: a value glued to
    #: another command's option is never shown either).
    every_valued: ClassVar[Callable[[], list[str]] | None] = None

    def __init__(self, *, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=allow_abbrev, **kwargs)
        self.add_argument(
            "--version",
            action="version",
            version=f"{PROG} {__version__}",
            help="print the version and exit",
        )

    def error(self, message: str) -> NoReturn:
        usage = self.usage_line() + "\n" if message.startswith("the following arg") else ""
        # A bad value: `--rate: expected a rate such as ...`, not `argument --rate: ...`.
        message = terminal_safe(message.removeprefix("argument "), line=True)
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")

    def usage_line(self) -> str:
        """`usage: adbatch run [OPTION ...] [INPUT ...]`: the options in one word."""
        words = [self.prog, "[OPTION ...]"]
        for action in self._get_positional_actions():
            name = action.metavar if isinstance(action.metavar, str) else action.dest
            if action.nargs == "*":
                words.append(f"[{name} ...]")
            elif action.nargs == "+":
                words.append(f"{name} [{name} ...]")
            elif action.nargs == "?":
                words.append(f"[{name}]")
            elif action.nargs == argparse.PARSER:
                words.append(f"{name} ...")
            else:
                words.append(name)
        return "usage: " + " ".join(words)

    def unknown(self, extras: Sequence[str]) -> NoReturn:
        """Exit 2 on arguments this (sub)command does not take, naming the nearest option."""
        # The first unknown option says it; a value after it may have been taken as an
        # input already, so the words after it are not listed.
        unknown = [arg for arg in extras if arg.startswith("-") and arg != "-"]
        if not unknown:
            print(self.usage_line(), file=sys.stderr)
            self.error("unrecognized arguments: " + " ".join(extras))
        import difflib  # (only on this error: start-up, issue 18)

        # The option's name only: `--tokn=VALUE` is a mistyped --token, and its value a
        # secret that must not be printed.
        name = unknown[0].partition("=")[0]
        valued = {s: a for a in self._actions if a.nargs != 0 for s in a.option_strings}
        if (option := glued_to(name, list(valued))) is not None:
            print(self.usage_line(), file=sys.stderr)
            if valued[option].help == argparse.SUPPRESS:  # --client-secret: its refusal
                valued[option](self, argparse.Namespace(), None, option)
            self.error(glued_message(option))
        every = Parser.every_valued() if Parser.every_valued is not None else []
        if (other := glued_to(name, every)) is not None:  # another command's
            print(self.usage_line(), file=sys.stderr)
            self.error(f"unknown option {other}... ({self.prog} takes no {other})")
        message = f"unknown option {name}"
        # A hidden option is never suggested (--client-secret only says it is refused).
        shown = [a for a in self._actions if a.help != argparse.SUPPRESS]
        options = [s for action in shown for s in action.option_strings]
        near = difflib.get_close_matches(name.lower(), options, n=1)  # --TOKEN: --token
        if near:
            message += f"; did you mean {near[0]}?"
        print(self.usage_line(), file=sys.stderr)
        self.error(message)


def glued_to(name: str, options: Sequence[str]) -> str | None:
    """The longest long option `name` starts with and goes on past by more than a typo
    (`--tokenVALUE`: a value glued to its option, maybe a secret), or None. A word or
    two letters more (`--summary-file`, `--proxyy`) is a typo: did-you-mean says it."""
    found = [o for o in options if o.startswith("--") and name.startswith(o) and name != o]
    option = max(found, key=len) if found else None
    rest = name[len(option) :] if option else ""
    return None if option is None or rest.startswith("-") or len(rest) <= 2 else option


def glued_message(option: str) -> str:
    """The refusal of `option` with a value glued to it, which is never shown."""
    return f"unknown option {option}...: write its value after a space or '=' ({option} VALUE)"


def say(text: str) -> None:
    """One line on stderr, after the program's name."""
    print(f"{PROG}: {terminal_safe(text, line=True)}", file=sys.stderr)


def run_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on a fresh event loop: uvloop when installed, as the benchmarks ran."""
    from engine.runtime.loop import run_loop  # (with anyio: only a command that runs one)

    return run_loop(fn, *args)


def write_file(path: str, data: bytes, *, after_run: bool = False) -> None:
    """`data` into `path`; OutputError when it cannot be: exit 2, or 3 `after_run` (a
    run's --summary: the calls were sent, exit 2 would say nothing was)."""
    from engine.files.sinks import refuse_if_held  # (only when a file is written)

    refuse_if_held(path, before_run=not after_run)  # another run's -o
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        message = f"cannot write {path}: {exc.strerror or exc}"
        if after_run:  # the calls were sent and their records written: say so
            message += " (the run's records are written and its summary is above)"
        raise OutputError(message, before_run=not after_run) from None


def json_bytes(data: Any) -> bytes:
    """`data` as indented JSON and a newline (--summary files). A lone surrogate (a
    path's undecodable byte, in a stop message say), which UTF-8 cannot carry, is
    written as its escape (`\\udcff`), as records write it (records.Result.to_json)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    except orjson.JSONEncodeError:
        return orjson.dumps(_printable(data), option=orjson.OPT_INDENT_2) + b"\n"


def _printable(value: Any) -> Any:
    from engine.core.events import printable

    if isinstance(value, str):
        return printable(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value
