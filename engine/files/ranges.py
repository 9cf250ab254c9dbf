"""Byte ranges of an uncompressed JSONL input, a file or an object (the Ray backend's shards).

Rules:
- A range starts at a line start and ends at one (or at the end of the input), as
  `engine.core.shard.cut_ranges` cuts them, so it holds whole lines only; `first_line`
  numbers its first line in the input, so `source` reads `path:line` (`URL:line`) as in
  a whole-input read. `seq` counts from 0 within the range.
- A file is opened and sought; an object is opened for ranged reads (files/storage.py)
  and sought, so only the range's bytes (and one read-ahead block) cross the network.
- The lines are read by sources.py's JSONL reader: same items, same invalid records.
- files/spans.py reads a local file's spans (`--workers`) with the same `RangeReader`.
"""

from __future__ import annotations

import io
from collections.abc import Generator
from typing import BinaryIO

from engine.config import DEFAULT_MAX_LINE_BYTES
from engine.core.events import NO_DEFAULTS, EventDefaults, Item, ReadCounts
from engine.errors import InputError
from engine.files.sources import jsonl_items
from engine.files.storage import StorageOptions, is_url, open_read, source_name


class RangeReader(io.RawIOBase):
    """At most `length` bytes of a file, from where it stands."""

    def __init__(self, raw: BinaryIO, length: int) -> None:
        self._raw = raw
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self._left)
        if size <= 0:
            return 0
        got = self._raw.readinto(memoryview(buffer)[:size])  # type: ignore[attr-defined]
        got = got or 0
        self._left -= got
        return int(got)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open(path: str, options: StorageOptions) -> BinaryIO:
    if is_url(path):
        return open_read(path, options)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror or exc}") from None


def read_range_items(
    path: str,
    start: int,
    end: int,
    *,
    first_line: int = 1,
    defaults: EventDefaults = NO_DEFAULTS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    counts: ReadCounts | None = None,
    storage_options: StorageOptions = (),
) -> Generator[Item, None, None]:
    """The JSONL records of bytes [start, end) of an uncompressed file or object, seq from 0."""
    counts = counts if counts is not None else ReadCounts()
    raw = _open(path, storage_options)
    raw.seek(start)
    stream = io.BufferedReader(RangeReader(raw, end - start))
    try:
        yield from jsonl_items(
            stream, source_name(path), 0, max_line_bytes, counts, defaults, first_line
        )
    finally:
        stream.close()
