"""CSV input -> one row per record, cut where Python's csv module cuts them.

Rules:
- Lines end as csv reads them from a file opened with `newline=""`: at `\\n`, `\\r\\n` or
  a lone `\\r` (an old-Mac CR-only file is rows, not one long line). A line's end is
  kept inside a quoted field, so a multi-line value is byte-for-byte what the file holds.
- A record goes on to the next line only while a field that began with a quote is still
  open (`quote_open`): a `"` anywhere else (an inch mark, `tv 55"`) is data, as for csv.
- Every record yields one row (or the reason it cannot be read); an unclosed quote is
  bounded by `max_bytes`, and so is every line, whatever the input holds. A record past
  `max_bytes` is one error, and the rest of it is skipped (not kept) up to its closing
  quote: a line inside the quotes is never read as a row, nor an over-long line's quote.
  That error comes where the record ends and names the lines it took (a stray quote takes
  the rest of the file: the record is all that shows it). A record's size is its bytes as
  the file holds them, the line ends inside its quotes and its closing line included.
- The first record is the header, read or not: a header that cannot be read (a bad quote,
  bytes not UTF-8, a line past `max_bytes`) makes each row after it an error naming why,
  and is a record of its own only when it took other lines with it (or is a read error),
  so no data row is ever taken as the header and none goes without its record.
"""

from __future__ import annotations

import contextlib
import csv
import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from engine.core.events import ReadCounts

#: A CSV row: its first line, its fields by header name (None when it cannot be read),
#: and why not.
Row = tuple[int, dict[str, object] | None, str | None]

_ENDS = ("\r\n", "\r", "\n")
_CLOSED = "up to its closing quote"


# Where a scan stands: at a field's start, in an unquoted field (or after a closed quote:
# a `"` there is data), inside a quoted field, or just after a `"` inside one (`""` or
# the close: the next piece tells).
_START, _BARE, _QUOTED, _QUOTE = range(4)


def _scan(text: str, state: int) -> int:
    """The state after `text`, read from `state` as csv reads it: a quote opens a field
    only at the field's start, and `""` inside one is a quote. Pieces of one line may be
    scanned one after another (an over-long line, never held whole)."""
    i, n = 0, len(text)
    while i < n:
        if state in (_START, _QUOTE):
            if text[i] == '"':  # an opening quote, or a doubled one: inside
                state, i = _QUOTED, i + 1
                continue
            state = _BARE  # (after a close, what follows up to ',' is the same field)
        if state == _BARE:
            j = text.find(",", i)
            if j < 0:
                return _BARE
            state, i = _START, j + 1
        else:
            j = text.find('"', i)
            if j < 0:
                return _QUOTED
            state, i = _QUOTE, j + 1
    return state


def quote_open(text: str, quoted: bool = False) -> bool:
    """Whether a quoted field is still open at the end of `text`, a record's line (which
    starts inside a quoted field when `quoted`), read as csv reads it."""
    return _scan(text, _QUOTED if quoted else _START) == _QUOTED


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line over `max_bytes`, not kept: whether a quoted field is open at its end when
    it begins a record (`opens`) and when it begins inside a quoted field (`stays_open`)."""

    opens: bool
    stays_open: bool


def csv_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[int, str | Exception | LongLine]]:
    """(line number, text with its line end | LongLine when over `max_bytes` | read error),
    the bytes that are not UTF-8 kept as surrogates (`surrogateescape`); memory bounded."""
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    limit = max_bytes + 2  # room for a `\r\n`
    after_cr = False  # the last piece read ended with `\r`
    line_no = 0

    def piece(size: int) -> str:
        nonlocal after_cr
        got = text.readline(size)
        if after_cr and got == "\n":  # the `\n` of a `\r\n` that `size` cut in two
            got = text.readline(size)
        after_cr = got.endswith("\r")
        return got

    try:
        while line := piece(limit):
            line_no += 1
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            if not line.endswith(_ENDS) and len(line) == limit:
                # drain the rest of the line without keeping it, its quotes followed
                fresh, inside = _scan(line, _START), _scan(line, _QUOTED)
                while rest := piece(1 << 16):
                    fresh, inside = _scan(rest, fresh), _scan(rest, inside)
                    if rest.endswith(_ENDS):
                        break
                yield line_no, LongLine(fresh == _QUOTED, inside == _QUOTED)
            elif len(line) * 4 > max_bytes and _size(line) > max_bytes:
                yield line_no, LongLine(quote_open(line), quote_open(line, True))
            else:
                yield line_no, line
    except (EOFError, OSError, zlib.error) as exc:
        yield line_no + 1, exc
    finally:
        with contextlib.suppress(ValueError):  # (already closed by its owner)
            text.detach()  # the stream is its owner's to close


def _size(line: str) -> int:
    """Bytes of `line` without its line end."""
    return len(_strip_end(line).encode("utf-8", "surrogateescape"))


def _strip_end(line: str) -> str:
    for end in _ENDS:
        if line.endswith(end):
            return line[: -len(end)]
    return line


def _skipped(first: int, error: str, last: int, until: str) -> str:
    """`error`, and the lines its record took with it (none of them a row)."""
    lines = f"line {first}" if first == last else f"lines {first}-{last}"
    return f"{error}: {lines} skipped, {until}"


def _records(
    stream: BinaryIO, max_bytes: int, counts: ReadCounts, read_error: Callable[[Exception], str]
) -> Iterator[tuple[int, int, str | None, str]]:
    """(first line, last line, the record's lines joined | None, why not): each record
    once, however long; blank lines counted. A record not read says which lines it took
    with it: its error is yielded where it ends (its closing quote, a read error or the
    end). A read error takes no line: its last line is the one before its first."""
    pending: list[str] = []  # the lines of a record whose quoted field is open
    pending_size = start = last = 0
    skip: tuple[int, str] | None = None  # (first line, error) of a record past max_bytes
    too_long = f"CSV record longer than {max_bytes} bytes"
    for line_no, data in csv_lines(stream, max_bytes):
        if isinstance(data, Exception):
            if skip is not None or pending:
                first, error = skip or (start, "CSV record has an unclosed quote")
                yield first, last, None, _skipped(first, error, last, "up to the read error")
                pending, pending_size, skip = [], 0, None
            yield line_no, line_no - 1, None, read_error(data)
            continue
        last = line_no
        if isinstance(data, LongLine):
            if skip is None and pending:
                pending, pending_size, skip = [], 0, (start, too_long)
            elif skip is None:
                if data.opens:  # its quoted field goes on: skipped up to the close
                    skip = (line_no, f"line longer than {max_bytes} bytes")
                else:
                    yield line_no, line_no, None, f"line longer than {max_bytes} bytes"
                continue
            still_open = data.stays_open
        elif skip is not None:  # the rest of that record, up to its closing quote
            still_open = quote_open(data, True)
        else:
            if not pending:
                if data.isspace():
                    counts.blank_lines += 1
                    continue
                start = line_no
            if not quote_open(data, bool(pending)):
                pending.append(_strip_end(data))
                joined = "".join(pending)
                if pending_size and pending_size + _size(data) > max_bytes:  # its last line too
                    yield start, line_no, None, _skipped(start, too_long, line_no, _CLOSED)
                else:
                    yield start, line_no, joined, ""
                pending, pending_size = [], 0
                continue
            pending.append(data)
            pending_size += len(data.encode("utf-8", "surrogateescape"))  # its line end too
            if pending_size > max_bytes:
                pending, pending_size, skip = [], 0, (start, too_long)
            continue  # a quoted field goes on to the next line
        if not still_open:
            yield skip[0], line_no, None, _skipped(*skip, line_no, _CLOSED)
            skip = None
    if skip is not None:
        until = "to the end of the file: its quote never closes"
        yield skip[0], last, None, _skipped(*skip, last, until)
    elif pending:
        error = "CSV record has an unclosed quote"
        yield start, last, None, _skipped(start, error, last, "to the end of the file")


def csv_rows(
    stream: BinaryIO, max_bytes: int, counts: ReadCounts, read_error: Callable[[Exception], str]
) -> Iterator[Row]:
    """Each CSV record of `stream` under its header row as a Row; blank lines counted."""
    header: list[str] | None = None
    header_error: str | None = None
    for start, last, joined, error in _records(stream, max_bytes, counts, read_error):
        fields, why = _fields(joined, error)
        if header is None and header_error is None:  # the first record: the header
            if fields is None:
                reason = why.removeprefix(_UNREADABLE)
                header_error = f"CSV header on line {start} cannot be read: {reason}"
                if last != start:  # it took data lines with it, or is a read error
                    yield start, None, why
            else:
                header, header_error = _header(fields)
        elif fields is None:
            yield start, None, why
        elif header_error is not None:
            yield start, None, header_error
        elif header is not None and len(fields) != len(header):
            yield start, None, f"CSV row has {len(fields)} fields, the header has {len(header)}"
        elif header is not None:
            yield start, {k: v for k, v in zip(header, fields, strict=True) if v}, None


_UNREADABLE = "CSV record cannot be read: "


def _fields(joined: str | None, error: str) -> tuple[list[str] | None, str]:
    """A record's fields, or None and why it cannot be read."""
    if joined is None:
        return None, error
    try:
        fields = next(csv.reader([joined], strict=True))
    except csv.Error as exc:
        return None, f"{_UNREADABLE}{exc}"
    if any("\udc80" <= ch <= "\udcff" for f in fields for ch in f):
        return None, "line is not valid UTF-8"
    return fields, ""


def _header(fields: list[str]) -> tuple[list[str], str | None]:
    """The header's column names, and why they cannot name a row's fields."""
    names = [f.strip() for f in fields]
    if any(not n for n in names):
        return names, "CSV header has an empty column name"
    if len(set(names)) != len(names):
        return names, "CSV header repeats a column name"
    return names, None
