"""A report's input, line by line, in bounded memory (pure: it reads the stream it is given).

Rules:
- A line longer than the limit is never held whole: its first `limit` + 1 bytes show it
  is too long, the rest is read in small pieces and dropped, and the line is counted
  (`too_long`) as an unreadable line is. An endless line (`report /dev/zero`) is read
  on in bounded memory, as `wc -l` reads it.
- Every other line is yielded as read, its end of line included.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

_DRAIN = 1 << 16


class Readable(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class BoundedLines:
    """The lines of `stream` of at most `limit` bytes; the longer ones are counted."""

    def __init__(self, stream: Readable, *, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self.too_long = 0

    def __iter__(self) -> Iterator[bytes]:
        read, limit = self._stream.readline, self._limit
        while chunk := read(limit + 1):
            if len(chunk) <= limit or chunk.endswith(b"\n"):  # at most `limit` before its EOL
                yield chunk
                continue
            while (rest := read(_DRAIN)) and not rest.endswith(b"\n"):
                pass  # the rest of the line, dropped as it goes by
            self.too_long += 1
