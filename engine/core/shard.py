"""Shard membership and byte ranges cut at line boundaries (pure: no I/O of its own).

Rules:
- Static shards (`--shard I/N`, I from 0 as Kubernetes' JOB_COMPLETION_INDEX): every
  process reads the whole input and keeps the records of its shard, so the record
  numbers (`seq`) and source positions stay those of the whole input. By position,
  record `seq` belongs to shard `seq % N`; by id, to a stable hash of `id` modulo N
  (a record without an id falls back to its position). Either way, the N shards are
  disjoint and cover the input, whatever each process is given to read.
- Byte ranges (the Ray backend): a range starts at a line start and ends at a line
  start or the end of the file, so no line is ever split; a line that straddles a
  nominal cut belongs to the range in which it starts. Only `\\n` ends a line (as in
  the readers), so CRLF lines and a last line without a newline need no special case.
  The cutter also numbers the lines, so a range's records keep their true `path:line`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from engine.core.events import Item, ReadCounts
from engine.core.shown import quoted

ShardBy = Literal["position", "id"]
SHARD_BY: tuple[ShardBy, ...] = ("position", "id")

#: Reads up to `size` bytes at `offset` (short only at the end of the file).
ReadAt = Callable[[int, int], bytes]

_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard `index` of `count` (0 <= index < count), chosen by position or by id."""

    index: int
    count: int
    by: ShardBy = "position"

    def owns(self, seq: int, event_id: str | None) -> bool:
        return shard_of(seq, event_id, self.count, self.by) == self.index


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N); raises ValueError with a message fit for the user."""
    index_text, sep, count_text = text.strip().partition("/")
    try:
        if not sep:
            raise ValueError
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"expected I/N such as 0/4, got {quoted(text)}") from None
    if count < 1:
        raise ValueError(f"the shard count N must be at least 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"the shard index I must be within 0..{count - 1}, got {index}")
    return index, count


def stable_hash(text: str) -> int:
    """The same 64-bit value in every process and Python version (unlike hash())."""
    digest = _blake2b()(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@cache
def _blake2b() -> Callable[..., Any]:
    """hashlib's blake2b, imported at the first --shard-by id hash, not at start-up."""
    import hashlib

    return hashlib.blake2b


def shard_of(seq: int, event_id: str | None, count: int, by: ShardBy = "position") -> int:
    """The shard (0..count-1) that record `seq` with this id belongs to."""
    if by == "id" and event_id is not None:
        return stable_hash(event_id) % count
    return seq % count


def select(items: Iterator[Item], spec: ShardSpec, counts: ReadCounts) -> Iterator[Item]:
    """The items of shard `spec`; `counts.records` counts every record read (all shards)."""
    for item in items:
        counts.records += 1
        if shard_of(item.seq, item.id, spec.count, spec.by) == spec.index:
            yield item


# -- byte ranges ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes [start, end) of a file: whole lines, the first of them numbered `first_line`."""

    start: int
    end: int
    first_line: int


def _count_newlines(read: ReadAt, start: int, end: int) -> int:
    total = 0
    pos = start
    while pos < end:
        chunk = read(pos, min(_SCAN_CHUNK, end - pos))
        if not chunk:
            break
        total += chunk.count(b"\n")
        pos += len(chunk)
    return total


def _find_newline(read: ReadAt, start: int, size: int) -> int:
    """Offset of the first `\\n` at or after `start`, or -1."""
    pos = start
    while pos < size:
        chunk = read(pos, min(_SCAN_CHUNK, size - pos))
        if not chunk:
            break
        found = chunk.find(b"\n")
        if found >= 0:
            return pos + found
        pos += len(chunk)
    return -1


def cut_ranges(size: int, parts: int, read: ReadAt) -> list[ByteRange]:
    """Cut a file of `size` bytes into at most `parts` non-empty ranges of whole lines.

    Reads the file once, front to back (the line numbers need every newline counted).
    Fewer ranges come back when lines are longer than a range would be.
    """
    if size <= 0:
        return []
    parts = max(1, parts)
    ranges: list[ByteRange] = []
    start = 0
    lines_before = 0  # newlines in [0, start)
    for k in range(1, parts):
        target = size * k // parts
        if target <= start:
            continue  # a long line already carried the previous range past this cut
        # The cut is the first line start at or after `target`: just past the first
        # newline at or after target - 1 (target itself is a line start when the
        # byte before it is a newline).
        newline = _find_newline(read, target - 1, size)
        if newline < 0:
            break
        cut = newline + 1
        inside = _count_newlines(read, start, target - 1) + 1
        ranges.append(ByteRange(start, cut, lines_before + 1))
        lines_before += inside
        start = cut
        if start >= size:
            break
    if start < size:
        ranges.append(ByteRange(start, size, lines_before + 1))
    return ranges


def bytes_reader(data: bytes) -> ReadAt:
    """A `ReadAt` over bytes in memory (tests, small inputs)."""
    return lambda offset, size: data[offset : offset + size]
