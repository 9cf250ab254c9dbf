"""The `adbatch` command's first module (and `python -m engine`'s): a Ctrl-C or a SIGTERM
while the rest of the program loads ends it at once, with the exit code of that signal
(130, 143) and one line, where Python would print a KeyboardInterrupt traceback from
inside an import. Once loaded, `engine.cli.main.entry` handles signals as a run does.

Only this module is imported before the handlers are set (the `engine` package itself
loads nothing: engine/__init__.py)."""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import NoReturn


def _loading(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"adbatch: interrupted\n")
    os._exit(128 + signum)


def entry() -> NoReturn:
    kept = {s: signal.signal(s, _loading) for s in (signal.SIGINT, signal.SIGTERM)}
    from engine.cli.main import entry as run_command

    for signum, handler in kept.items():
        signal.signal(signum, handler)
    run_command()
