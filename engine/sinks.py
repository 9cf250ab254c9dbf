"""Where records go: a JSONL file or stdout, written in batches of whole lines.

Each batch is written with one `write` of complete lines and handed to the OS at once,
so a crash leaves at most a torn last line, never a half-written record in the middle.
"""

from __future__ import annotations

import os
import sys
from typing import Protocol

from engine.errors import FatalError, InputError


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """Appends whole JSONL lines to a file (or stdout when path is None or '-')."""

    __slots__ = ("_fd", "_owned", "name")

    def __init__(self, path: str | None, *, append: bool = False) -> None:
        if path is None or path == "-":
            sys.stdout.flush()
            self._fd = sys.stdout.fileno()
            self._owned = False
            self.name = "<stdout>"
            return
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write output {path}: {exc.strerror or exc}") from None
        self._owned = True
        self.name = path

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except BrokenPipeError:
            raise FatalError(f"output {self.name} was closed by the reader") from None
        except OSError as exc:
            raise FatalError(f"cannot write output {self.name}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
