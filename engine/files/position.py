"""How far the readers are in their inputs: bytes counted as they are read, against the
size of the inputs when it is known (the live display's done/total and ETA).

Rules:
- Counted where the bytes leave the file, below the buffer and below gzip: compressed
  bytes for a gzipped file, what its size is compared with.
- One count per buffer fill, never one per line: the reader's speed is unchanged.
- Only regular files have a size: stdin, a pipe, a process substitution or a device
  gives None, and the display shows no total. An object (a URL input) has the size its
  listing gave (files/storage.py `known_size`: no request of its own).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable
from typing import BinaryIO

from engine.core.events import ReadCounts
from engine.files.storage import is_url, known_size

STDIN = "-"


def input_size(paths: Iterable[str]) -> int | None:
    """The bytes the inputs hold when every one is a regular file (what
    `ReadCounts.bytes_read` counts up to); None with stdin, a pipe or a device."""
    total = 0
    for path in paths:
        if path == STDIN:
            return None
        if is_url(path):
            size = known_size(path)
            if size is None:
                return None
            total += size
            continue
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        total += info.st_size
    return total


class Counted(io.RawIOBase):
    """A file's bytes, added to `counts.bytes_read` as they are read (one call per
    buffer fill of the BufferedReader above it)."""

    def __init__(self, raw: io.FileIO | BinaryIO, counts: ReadCounts) -> None:
        self._raw = raw
        self._counts = counts

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        got = self._raw.readinto(buffer) or 0  # type: ignore[union-attr]
        self._counts.bytes_read += got
        return got

    def close(self) -> None:
        self._raw.close()
        super().close()
