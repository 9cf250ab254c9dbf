"""Input files, stdin, gzip and CSV -> events with their source position.

Rules:
- Every input line (CSV: every record) yields exactly one item: an Event, or an Invalid
  naming the line and what is wrong. Blank lines are the only exception: they are
  skipped and counted, since they carry nothing to answer.
- Nothing here raises on bad bytes: invalid UTF-8, binary garbage, over-long lines,
  deep nesting, a truncated gzip stream all become Invalid items, and memory stays
  bounded by `max_line_bytes` whatever the input holds.
- Gzip is recognised by its magic bytes in a `.gz` file or on stdin; the format (JSONL or CSV)
  by the name without `.gz`, or the explicit `input_format`.
- Reading is synchronous and streamed; runtime/feeds.py pulls the items on a thread of
  their own (or, for local files, in the loop's) so the loop never blocks on a pipe.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import sys
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from engine.config import DEFAULT_MAX_LINE_BYTES, Format
from engine.core.events import (
    NO_DEFAULTS,
    EventDefaults,
    Invalid,
    Item,
    ReadCounts,
    make_event,
)
from engine.core.shard import ShardSpec
from engine.errors import InputError
from engine.files import parquet
from engine.files.csvrows import csv_rows
from engine.files.jsonlines import parse_json_line as parse_json_line  # re-exported
from engine.files.position import Counted
from engine.files.position import input_size as input_size  # re-exported
from engine.files.storage import StorageOptions, is_url, open_read, source_name
from engine.files.unread import REST_OF_FILE, unread_error

STDIN = "-"
STDIN_NAME = "<stdin>"
GZIP_MAGIC = b"\x1f\x8b"


# Slotted, not frozen, by measurement: one per input line (0.13 us against 0.42 frozen).
# Never mutated.
@dataclass(slots=True)
class Record:
    """One input record before it becomes an event."""

    line: int
    obj: dict[str, object] | None
    error: str | None


def source_format(path: str, input_format: Format) -> Literal["jsonl", "csv", "parquet"]:
    if input_format != "auto":
        return input_format
    name = path.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"  # read by row group (files/parquet.py), never gzipped
    if name.endswith(".gz"):
        name = name[:-3]
    return "csv" if name.endswith((".csv", ".tsv")) else "jsonl"


def check_inputs(
    paths: Iterable[str], *, input_format: Format = "auto", options: StorageOptions = ()
) -> None:
    """Fail early, with one clear line, on an input that cannot be read.

    By `stat` and `access` only: each input is opened once, when it is read. A probing
    open would consume a named pipe's writer (the real open then waits forever) or a
    process substitution's `/dev/fd/N`. A Parquet file (never a pipe: it is read from
    its end) has its footer read now, so a bad one is exit 2 before any call."""
    paths = list(paths)
    streams: set[tuple[int, int]] = set()  # the pipes and devices named so far
    for path in paths:
        if is_url(path):  # a URL was listed when expanded (files/storage.py)
            continue
        try:
            info = os.fstat(0) if path == STDIN else os.stat(path)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise InputError(f"cannot read input {path}: {reason}") from None
        if path == STDIN:
            if not stat.S_ISREG(info.st_mode):  # `- /dev/stdin`: the same pipe twice
                streams.add((info.st_dev, info.st_ino))
            continue
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"input {path} is a directory, not a file of events")
        if not stat.S_ISREG(info.st_mode):
            # Read to its end once, a pipe's second open waits for a writer forever.
            if (info.st_dev, info.st_ino) in streams:
                raise InputError(f"input {path} is a pipe or a device: it can be read only once")
            streams.add((info.st_dev, info.st_ino))
        if not os.access(path, os.R_OK):
            raise InputError(f"cannot read input {path}: Permission denied")
    for path in paths:
        if path != STDIN and source_format(path, input_format) == "parquet":
            parquet.check(path, options)


def _open_binary(
    path: str, counts: ReadCounts | None = None, options: StorageOptions = ()
) -> tuple[BinaryIO, Callable[[], None]]:
    """The byte stream of one input (gunzipped when it starts with the gzip magic),
    and how to close it; a file's bytes read are counted into `counts`."""
    if path == STDIN:
        raw: BinaryIO = sys.stdin.buffer
        close: Callable[[], None] = lambda: None  # noqa: E731 - stdin stays open
    elif is_url(path):  # object storage, http(s): streamed by ranged reads
        raw = io.BufferedReader(Counted(open_read(path, options), counts or ReadCounts()), 1 << 16)
        close = raw.close
    else:
        try:
            file = open(path, "rb", buffering=0)
        except OSError as exc:
            raise InputError(f"cannot read input {path}: {exc.strerror or exc}") from None
        raw = (
            io.BufferedReader(Counted(file, counts), 1 << 16)
            if counts is not None
            else io.BufferedReader(file)
        )
        close = raw.close
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[type-var]
    if is_gzipped(path, buffered):
        return gzip.GzipFile(fileobj=buffered, mode="rb"), close  # type: ignore[return-value]
    return buffered, close


def is_gzipped(path: str, buffered: io.BufferedReader[Any]) -> bool:
    """Gzip by content (peeked, not read), so a misnamed or piped .gz still reads; but a
    plain file whose first bytes happen to be the magic stays plain, all its lines answered."""
    return (path == STDIN or path.lower().endswith(".gz")) and buffered.peek(2)[:2] == GZIP_MAGIC


_TooLong = object()
BOM = b"\xef\xbb\xbf"  # taken off line 1


def is_blank(line: bytes) -> bool:
    """A line that makes no record: empty, or ASCII whitespace only (its end of line, and
    on line 1 a BOM, taken off). As `not line.strip()`, without the copy."""
    return not line or line.isspace()


def _physical_lines(
    stream: BinaryIO, max_bytes: int, first_line: int = 1
) -> Iterator[tuple[int, bytes | object | Exception]]:
    """(line number, bytes without EOL | _TooLong | read error), bounded memory; the
    stream's first line is line `first_line` (a byte range of a file: files/spans.py)."""
    line_no = first_line - 1
    while True:
        line_no += 1
        try:
            chunk = stream.readline(max_bytes + 1)
        except (EOFError, OSError, zlib.error) as exc:
            yield line_no, exc
            return
        if not chunk:
            return
        if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
            try:
                while True:  # drain the rest of the line without keeping it
                    rest = stream.readline(1 << 16)
                    if not rest or rest.endswith(b"\n"):
                        break
            except (EOFError, OSError, zlib.error) as exc:
                yield line_no, exc
                return
            yield line_no, _TooLong
            continue
        if line_no == 1 and chunk.startswith(BOM):
            chunk = chunk[3:]
        yield line_no, chunk.rstrip(b"\r\n")


def _read_error(exc: Exception) -> str:
    if isinstance(exc, EOFError | gzip.BadGzipFile | zlib.error):
        return f"compressed input is truncated or corrupt ({exc}); {REST_OF_FILE}"
    return unread_error(exc)


def jsonl_records(stream: BinaryIO, max_bytes: int, counts: ReadCounts) -> Iterator[Record]:
    for line_no, data in _physical_lines(stream, max_bytes):
        if type(data) is not bytes:
            yield Record(line_no, None, _line_error(data, max_bytes))
        else:
            assert isinstance(data, bytes)
            if is_blank(data):
                counts.blank_lines += 1
                continue
            obj, error = parse_json_line(data)
            yield Record(line_no, obj, error)


def _csv_records(stream: BinaryIO, max_bytes: int, counts: ReadCounts) -> Iterator[Record]:
    for line, obj, error in csv_rows(stream, max_bytes, counts, _read_error):
        yield Record(line, obj, error)


def _line_error(data: object, max_bytes: int) -> str:
    return f"line longer than {max_bytes} bytes" if data is _TooLong else _read_error(data)  # type: ignore[arg-type]


def jsonl_items(
    stream: BinaryIO,
    name: str,
    seq: int,
    max_bytes: int,
    counts: ReadCounts,
    defaults: EventDefaults,
    first_line: int = 1,
) -> Generator[Item, None, int]:
    """`_record_items` of `jsonl_records`, in one loop: no Record between the line and
    its item (the hot path of a run). Returns the next seq."""
    for line_no, data in _physical_lines(stream, max_bytes, first_line):
        if type(data) is bytes:
            if not data or data.isspace():  # is_blank(data), inline: the hot path
                counts.blank_lines += 1
                continue
            obj, error = parse_json_line(data)
            source = f"{name}:{line_no}"
            if obj is None:
                item: Item = Invalid(seq, source, None, error or "unreadable line")
            else:
                item = make_event(obj, seq=seq, source=source, defaults=defaults)
        else:
            item = Invalid(seq, f"{name}:{line_no}", None, _line_error(data, max_bytes))
        seq += 1
        yield item
    return seq


def _record_items(
    records: Iterator[Record], name: str, seq: int, defaults: EventDefaults
) -> Generator[Item, None, int]:
    """Each record as its Event or Invalid, numbered from `seq`; returns the next seq."""
    for record in records:
        source = f"{name}:{record.line}"
        if record.obj is None:
            item: Item = Invalid(seq, source, None, record.error or "unreadable line")
        else:
            item = make_event(record.obj, seq=seq, source=source, defaults=defaults)
        seq += 1
        yield item
    return seq


def _sharded(
    items: Generator[Item, None, int], shard: ShardSpec, counts: ReadCounts
) -> Generator[Item, None, int]:
    """The shard's items of `items`, every one counted in `counts.records`."""
    while True:
        try:
            item = next(items)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        counts.records += 1
        if shard.owns(item.seq, item.id):
            yield item


def read_items(
    paths: Iterable[str],
    *,
    input_format: Format = "auto",
    defaults: EventDefaults = NO_DEFAULTS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    counts: ReadCounts | None = None,
    storage_options: StorageOptions = (),
    shard: ShardSpec | None = None,
) -> Generator[Item, None, None]:
    """Every input record of every path, in order, as Event or Invalid with seq 0, 1, ...

    With `shard`, only that shard's items (`core.shard`: a Parquet file's by row group),
    and `counts.records` counts every record read."""
    counts = counts if counts is not None else ReadCounts()
    seq = 0
    for path in paths:
        name = STDIN_NAME if path == STDIN else source_name(path)
        fmt = source_format(path, input_format)
        if fmt == "parquet":  # row groups in batches, not lines
            seq = yield from parquet.items(
                path, seq, defaults=defaults, counts=counts, shard=shard, options=storage_options
            )
            continue
        stream, close = _open_binary(path, counts, storage_options)
        try:
            if fmt == "csv":
                records = _csv_records(stream, max_line_bytes, counts)
                items = _record_items(records, name, seq, defaults)
            else:
                items = jsonl_items(stream, name, seq, max_line_bytes, counts, defaults)
            seq = yield from (items if shard is None else _sharded(items, shard, counts))
        finally:
            close()


# -- units: input records split off before parsing (multi-process runs) -----------------


#: A unit's record before it is parsed (see `Unit.raw`).
Raw = bytes | dict[str, object] | str | Invalid


# Slotted, not frozen, by measurement: tens of thousands are made each second (0.5 us a
# frozen one, 0.2 this). They cross the pipe as columns (multiproc.messages.Units), not
# one by one: pickling a unit object cost 1-3 us against 0.1. Never mutated.
@dataclass(slots=True)
class Unit:
    """One input record, numbered, not yet parsed (what a --workers parent hands out).

    `raw`: the JSONL line's bytes to parse, a CSV row's (or Parquet row's) fields, the
    error text of a line that could not be read, or a Parquet row's Invalid as
    `parquet.items` gives it (it may hold the row's id)."""

    seq: int
    source: str
    raw: Raw


def read_units(
    paths: Iterable[str],
    *,
    input_format: Format = "auto",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    counts: ReadCounts | None = None,
    storage_options: StorageOptions = (),
) -> Generator[Unit, None, None]:
    """Like `read_items` (same seq, same source, same skipped blanks) but leaves the JSON
    parsing and the event checks to `unit_item`, so another process can do them."""
    counts = counts if counts is not None else ReadCounts()
    seq = 0
    for path in paths:
        name = STDIN_NAME if path == STDIN else source_name(path)
        if source_format(path, input_format) == "parquet":
            seq = yield from parquet.units(path, seq, Unit, counts=counts, options=storage_options)
            continue
        stream, close = _open_binary(path, counts, storage_options)
        try:
            if source_format(path, input_format) == "csv":
                for record in _csv_records(stream, max_line_bytes, counts):
                    row = record.obj if record.obj is not None else record.error or ""
                    yield Unit(seq, f"{name}:{record.line}", row)
                    seq += 1
                continue
            for line_no, data in _physical_lines(stream, max_line_bytes):
                if data is _TooLong:
                    payload: bytes | str = f"line longer than {max_line_bytes} bytes"
                elif isinstance(data, Exception):
                    payload = _read_error(data)
                else:
                    assert isinstance(data, bytes)
                    if is_blank(data):
                        counts.blank_lines += 1
                        continue
                    payload = data
                yield Unit(seq, f"{name}:{line_no}", payload)
                seq += 1
        finally:
            close()


def unit_item(unit: Unit, defaults: EventDefaults = NO_DEFAULTS) -> Item:
    """The Event or Invalid that `read_items` gives for the same input record."""
    return raw_item(unit.seq, unit.source, unit.raw, defaults)


def raw_item(seq: int, source: str, payload: Raw, defaults: EventDefaults) -> Item:
    """`unit_item` of a unit given as its three fields."""
    if isinstance(payload, Invalid):  # answered where it was read (a Parquet row)
        return payload
    if isinstance(payload, bytes):
        obj, error = parse_json_line(payload)
        if obj is None:
            return Invalid(seq, source, None, error or "unreadable line")
        return make_event(obj, seq=seq, source=source, defaults=defaults)
    if isinstance(payload, dict):
        return make_event(payload, seq=seq, source=source, defaults=defaults)
    return Invalid(seq, source, None, payload or "unreadable line")
