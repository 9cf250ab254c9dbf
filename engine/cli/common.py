"""What every command does the same way: its name in messages, small files, the event loop.

Imports no other module of engine.cli, so every command module may import it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

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
