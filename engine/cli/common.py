"""What every command does the same way: its name in messages, small files, the event loop.

Imports no other module of engine.cli, so every command module may import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

import orjson

from engine.core.events import printable
from engine.errors import OutputError
from engine.runtime.loop import run_loop

PROG = "adbatch"

#: What `add_subparsers` returns: each command module adds its subcommands to it. A
#: string, as argparse's class is not subscriptable at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def say(text: str) -> None:
    """One line on stderr, after the program's name."""
    print(f"{PROG}: {text}", file=sys.stderr)


def run_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on a fresh event loop: uvloop when installed, as the benchmarks ran."""
    return run_loop(fn, *args)


def write_file(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", before_run=True) from None


def json_bytes(data: Any) -> bytes:
    """`data` as indented JSON and a newline (--summary files). A lone surrogate (a
    path's undecodable byte, in a stop message say), which UTF-8 cannot carry, is
    written as its escape (`\\udcff`), as records write it (records.Result.to_json)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    except orjson.JSONEncodeError:
        return orjson.dumps(_printable(data), option=orjson.OPT_INDENT_2) + b"\n"


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value
