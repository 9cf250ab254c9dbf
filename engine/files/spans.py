"""Spans: a local JSONL file handed out by byte range, not line by line (`--workers`).

A `--workers N` parent that read every line and sent it down a pipe spent ~1 µs of CPU
per event more than one that only counts (issue 18). For a local, uncompressed JSONL
file the parent now only counts: `spans` reads the file once, finds where its lines
start, and cuts it into `Span`s of up to `size` records, each numbered exactly as
`sources.read_items` numbers them (the same seq, the same `path:line`, blank lines
skipped and counted). A worker reads its span's bytes itself (`span_items`). A block
with no blank, over-long or first line is cut in C loops (~0.4 µs a line in all).

Rules:
- A record is what `sources` makes one: every line but a blank one (empty, or ASCII
  whitespace only, a byte-order mark on line 1 ignored); a line over `max_line_bytes`
  (its `\\r` included, its `\\n` not) is one record whatever it holds.
- The parent keeps at most `max_line_bytes` + 1 bytes of any one line in memory.
- The parent holds every input open for the whole run (`HeldFiles`; `can_span` allows
  spans only when the process may hold them all, else the parent reads the lines) and a
  worker opens its span's file through the parent's descriptor (`/proc/PID/fd/N`): a
  file renamed, replaced or deleted during the run is still the one the parent
  numbered, as one process reads on from the file it opened. Without access to it, the
  worker opens the path and checks it is the same file (device and inode).
- Two cases differ from one process, each still one line per record: opening the
  parent's descriptor checks the file's permissions again, so an input whose read
  permission is taken away during the run (a user other than root) has its unread
  spans answered "Permission denied"; and a file rewritten in place during the run may
  have a line cut at each span's edge (one process cuts one line at most).
- A worker that reads fewer records than its span holds (the file was cut short during
  the run, or replaced and the check failed) answers each missing one with an Invalid
  record: one line per input record, still (its line number counted on from the last
  line read: the lost lines' blank ones are not known).
- The parent reads ahead of the calls by its workers' credit (a few spans) and one
  block (64 KiB), as a 1-process run reads ahead of its calls by a few batches: lines
  appended to an input before the reader gets to its end are read, after, not.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from engine.config import Format
from engine.core.events import EventDefaults, Invalid, Item, ReadCounts
from engine.errors import InputError
from engine.files.localfs import is_local_file
from engine.files.ranges import RangeReader
from engine.files.sources import BOM, STDIN, _read_error, is_blank, jsonl_items, source_format
from engine.files.storage import is_url, source_name
from engine.files.unread import THIS_RECORD, unread_error

_BLOCK = 1 << 16


@dataclass(frozen=True, slots=True)
class Span:
    """Records `first_seq`, ... (`count` of them) of the file at `path`: its bytes
    [`start`, `end`), whose first line is line `first_line`; `name` is its `source`."""

    path: str
    name: str
    start: int
    end: int
    first_line: int
    first_seq: int
    count: int
    #: The parent's open descriptor of the file (`/proc/PID/fd/N`; "" when it has none)
    #: and the file's (device, inode), checked when that cannot be opened.
    held: str = ""
    identity: tuple[int, int] = (0, 0)
    #: Why its records cannot be read (a read error of the parent's, as one process
    #: makes it a record): the worker answers them with it, reading nothing.
    error: str = ""

    @property
    def seqs(self) -> range:
        return range(self.first_seq, self.first_seq + self.count)


class _Cutter:
    """Where the spans of one file start and end, fed its lines in order."""

    def __init__(self, span: Span, size: int, max_bytes: int, counts: ReadCounts) -> None:
        self.template = span  # its file, name, descriptor and identity
        self.size, self.max_bytes, self.counts = size, max_bytes, counts
        self.pos, self.line, self.seq = span.start, span.first_line, span.first_seq
        self.start, self.first_line, self.first_seq = self.pos, self.line, self.seq

    def lines(self, lines: list[bytes]) -> Iterator[Span]:
        """Whole lines, without their `\\n`; the spans they complete. When none is blank
        (`is_blank`, here over the list at once) or over-long and none is line 1 (the
        usual block), in C loops; else line by line (`line_of`)."""
        if not lines:
            return
        max_bytes = self.max_bytes
        if (
            self.line == 1
            or b"" in lines
            or max(map(len, lines)) > max_bytes
            or any(map(bytes.isspace, lines))
        ):
            for line in lines:
                if (done := self.line_of(len(line), line)) is not None:
                    yield done
            return
        i, n = 0, len(lines)
        while i < n:
            need = self.size - (self.seq - self.first_seq)
            take = min(need, n - i)
            self.pos += sum(map(len, lines[i : i + take])) + take
            self.seq += take
            self.line += take
            i += take
            if take == need:
                yield self.cut()

    def line_of(self, length: int, head: bytes) -> Span | None:
        """One line of `length` bytes without its `\\n`, `head` its first bytes (at least
        `max_bytes` + 1 of them); the span it completes."""
        self.pos += length + 1
        self.line += 1
        if length <= self.max_bytes:  # an over-long line is a record whatever it holds
            if self.line == 2 and head.startswith(BOM):
                head = head[len(BOM) :]
            if is_blank(head):
                self.counts.blank_lines += 1
                return None
        self.seq += 1
        return self.cut() if self.seq - self.first_seq >= self.size else None

    def failed(self, error: str) -> Span:
        """The record of a read error, at the line being read: one span of its own."""
        self.seq += 1
        return replace(self.cut(), error=error)

    def cut(self) -> Span:
        count = self.seq - self.first_seq
        span = replace(
            self.template,
            start=self.start,
            end=self.pos,
            first_line=self.first_line,
            first_seq=self.first_seq,
            count=count,
        )
        self.start, self.first_line, self.first_seq = self.pos, self.line, self.seq
        return span


def spans(
    span: Span, size: int, *, max_line_bytes: int, counts: ReadCounts, block: int = _BLOCK
) -> Generator[Span, None, int]:
    """The records of `span` (`count` unknown: read to `end`, -1 for the end of the file)
    as spans of up to `size` records; returns the seq after the last. The bytes read are
    counted into `counts` (the input's progress), and so are the blank lines. A read
    error ends the file as in one process: one record says it, the rest is unread."""
    cutter = _Cutter(span, size, max_line_bytes, counts)
    opened, error = _open(span)
    if opened is None:
        raise InputError(f"cannot read input {span.path}: {error}")
    with opened as file:
        failed = yield from _scan(file, span, cutter, block)
    if cutter.seq > cutter.first_seq:
        yield cutter.cut()
    if failed is not None:
        yield cutter.failed(failed)
    return cutter.seq


def _scan(
    file: io.FileIO, span: Span, cutter: _Cutter, block: int
) -> Generator[Span, None, str | None]:
    """Feed `cutter` the lines of `file` from `span.start` (to `span.end`); the spans it
    completes; returns the record of a read error, or None."""
    max_bytes = cutter.max_bytes
    left = span.end - span.start if span.end >= 0 else -1
    carry = b""  # the start of a line that goes on in the next block (<= max + 1 bytes)
    carried = 0  # that line's length so far
    try:
        file.seek(span.start)
        while left:
            data = file.read(block if left < 0 else min(block, left))
            if not data:
                break
            left -= len(data) if left > 0 else 0
            cutter.counts.bytes_read += len(data)
            lines = data.split(b"\n")
            tail = lines.pop()
            if carried and lines:  # the carried line ends in this block
                head = lines[0]
                line = carry + head[: max_bytes + 1]
                if (done := cutter.line_of(carried + len(head), line)) is not None:
                    yield done
                carry, carried, lines = b"", 0, lines[1:]
            yield from cutter.lines(lines)
            if len(carry) <= max_bytes:
                carry += tail[: max_bytes + 1 - len(carry)]
            carried += len(tail)
    except OSError as exc:
        return _read_error(exc)
    if carried and (done := cutter.line_of(carried, carry)) is not None:  # no \n at the end
        yield done
    return None


def can_span(paths: Sequence[str], input_format: Format, files: int | None) -> bool:
    """Whether every input is an uncompressed JSONL file on a local filesystem, and
    there are no more of them than the `files` this process may hold open besides what
    else it needs (None: no limit)."""
    if files is not None and len(paths) > files:
        return False
    return all(
        path != STDIN
        and not is_url(path)
        and not path.lower().endswith(".gz")
        and source_format(path, input_format) == "jsonl"
        and is_local_file(path)
        for path in paths
    )


class HeldFiles:
    """The inputs a parent hands out as spans, each held open until `close` (the end of
    the run), so that a worker reads the very file the parent numbered (and no other
    file can take its inode meanwhile). `can_span` allows spans only when the process
    may hold every input open."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def hold(self, path: str) -> Span:
        """The whole file at `path` as a Span to cut (`count` unknown, `end` -1)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InputError(f"cannot read input {path}: {exc.strerror or exc}") from None
        self._fds.append(fd)
        info = os.fstat(fd)
        held = f"/proc/{os.getpid()}/fd/{fd}"
        return Span(path, source_name(path), 0, -1, 1, 0, 0, held, (info.st_dev, info.st_ino))

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


def input_spans(
    paths: Iterable[str],
    size: int,
    parts: int,
    *,
    max_line_bytes: int,
    counts: ReadCounts,
    held: HeldFiles,
) -> Iterator[Span]:
    """Every input's records, numbered on from one input to the next, as spans of `size`;
    a shorter one (an input's end) is cut in up to `parts` spans, so that a short input
    still runs on every worker."""
    seq = 0
    for path in paths:
        whole = replace(held.hold(path), first_seq=seq)
        cut = spans(whole, size, max_line_bytes=max_line_bytes, counts=counts)
        while True:
            try:
                span = next(cut)
            except StopIteration as end:
                seq = end.value
                break
            if span.count >= size or parts == 1:
                yield span
            else:
                yield from _shared(span, parts, max_line_bytes)


def _shared(span: Span, parts: int, max_line_bytes: int) -> Iterator[Span]:
    """`span` cut in up to `parts` spans that hold exactly its records (`span.seqs`), as
    the first scan numbered them, however the file changed since: a line more is not
    handed out, a line gone is answered by the worker as unread."""
    end = span.first_seq + span.count
    seq = span.first_seq
    share = math.ceil(span.count / parts)
    try:
        for part in spans(span, share, max_line_bytes=max_line_bytes, counts=ReadCounts()):
            if part.first_seq >= end:
                break
            seq = min(end, part.first_seq + part.count)
            yield replace(part, count=seq - part.first_seq)
    except InputError:
        pass  # the worker's read says what became of the file
    if seq < end:
        line = span.first_line + (seq - span.first_seq)  # (blank lines not counted)
        yield replace(span, start=span.end, first_line=line, first_seq=seq, count=end - seq)


def _open(span: Span) -> tuple[io.FileIO | None, str]:
    """The span's file, opened: through the parent's descriptor, else by its path, each
    only when it is the file the parent numbered (device and inode: a descriptor number
    or a path may name another by now); or None and why not."""
    why = "no file to read"
    for name in (span.held, span.path):
        if not name:
            continue
        try:
            file = open(name, "rb", buffering=0)
        except OSError as exc:
            why = f"{exc.strerror or exc}"
            continue
        info = os.fstat(file.fileno())
        if span.identity == (0, 0) or (info.st_dev, info.st_ino) == span.identity:
            return file, ""
        file.close()
        why = "the file was replaced during the run"
    return None, why


def span_items(
    span: Span, defaults: EventDefaults, *, max_line_bytes: int
) -> Generator[Item, None, None]:
    """The items of `span`, as `sources.read_items` gives them in a whole-file read."""
    seq, end = span.first_seq, span.first_seq + span.count
    line = span.first_line  # the line of record `seq`, when no record was read
    error = span.error
    if not error:
        file, why = _open(span)
        if file is None:
            error = unread_error(why, end=THIS_RECORD)
        else:
            error = f"input changed while the run read it; {THIS_RECORD}"
            last = yield from _read(span, file, defaults, max_line_bytes)
            if last is not None:
                seq, line = last.seq + 1, int(last.source.rpartition(":")[2]) + 1
    for missing in range(seq, end):  # (the lost lines' blank ones are not known)
        yield Invalid(missing, f"{span.name}:{line + missing - seq}", None, error)


def _read(
    span: Span, file: io.FileIO, defaults: EventDefaults, max_line_bytes: int
) -> Generator[Item, None, Item | None]:
    """The items of `span`'s bytes of `file` (closed after), none past its seqs; returns
    the last one, or None."""
    end = span.first_seq + span.count
    stream = io.BufferedReader(RangeReader(file, span.end - span.start), 1 << 16)
    last: Item | None = None
    try:
        file.seek(span.start)
        args = (span.name, span.first_seq, max_line_bytes, ReadCounts(), defaults)
        for item in jsonl_items(stream, *args, span.first_line):
            if item.seq >= end:
                break  # the file changed: what is past the span is not this run's
            last = item
            yield item
    finally:
        stream.close()
    return last
