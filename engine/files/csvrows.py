"""CSV input -> one row per record, cut where Python's csv module cuts them.

Rules:
- Lines end as csv reads them from a file opened with `newline=""`: at `\\n`, `\\r\\n` or
  a lone `\\r` (an old-Mac CR-only file is rows, not one long line). A line's end is
  kept inside a quoted field, so a multi-line value is byte-for-byte what the file holds.
- A record goes on to the next line only while a field that began with a quote is still
  open (`quote_open`): a `"` anywhere else (an inch mark, `tv 55"`) is data, as for csv.
- Every record yields one row (or the reason it cannot be read); an unclosed quote is
  bounded by `max_bytes`, and so is every line, whatever the input holds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from engine.core.events import ReadCounts

#: A CSV row: its first line, its fields by header name (None when it cannot be read),
#: and why not.
Row = tuple[int, dict[str, object] | None, str | None]

_ENDS = ("\r\n", "\r", "\n")


def quote_open(text: str, quoted: bool = False) -> bool:
    """Whether a quoted field is still open at the end of `text`, a record's line (which
    starts inside a quoted field when `quoted`), read as csv reads it: a quote opens a
    field only at the field's start, and `""` inside one is a quote."""
    i = 0
    while True:
        if quoted:
            j = text.find('"', i)
            if j < 0:
                return True
            if text.startswith('"', j + 1):  # a doubled quote: still inside
                i = j + 2
                continue
            quoted, i = False, j + 1  # closed; what follows up to ',' is the same field
        elif text.startswith('"', i):
            quoted, i = True, i + 1
            continue
        j = text.find(",", i)
        if j < 0:
            return False
        i = j + 1


def csv_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[int, str | Exception | None]]:
    """(line number, text with its line end | None when over `max_bytes` | read error),
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
                while (rest := piece(1 << 16)) and not rest.endswith(_ENDS):
                    pass  # drain the rest of the line without keeping it
                yield line_no, None
            elif len(line) * 4 > max_bytes and _size(line) > max_bytes:
                yield line_no, None
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


def csv_rows(
    stream: BinaryIO, max_bytes: int, counts: ReadCounts, read_error: Callable[[Exception], str]
) -> Iterator[Row]:
    """Each CSV record of `stream` under its header row as a Row; blank lines counted."""
    header: list[str] | None = None
    header_error: str | None = None
    pending: list[str] = []  # the lines of a record whose quoted field is open
    pending_size = start = 0
    for line_no, data in csv_lines(stream, max_bytes):
        if not isinstance(data, str):
            if pending:
                yield start, None, "CSV record has an unclosed quote"
                pending, pending_size = [], 0
            if data is None:
                yield line_no, None, f"line longer than {max_bytes} bytes"
            else:
                yield line_no, None, read_error(data)
            continue
        if not pending:
            if data.isspace():
                counts.blank_lines += 1
                continue
            start = line_no
        if quote_open(data, bool(pending)):
            pending.append(data)
            pending_size += _size(data) + 1
            if pending_size <= max_bytes:
                continue  # a quoted field goes on to the next line
            pending, pending_size = [], 0
            yield start, None, f"CSV record longer than {max_bytes} bytes"
            continue
        pending.append(_strip_end(data))
        joined = "".join(pending)
        pending, pending_size = [], 0
        try:
            fields = next(csv.reader([joined], strict=True))
        except csv.Error as exc:
            yield start, None, f"CSV record cannot be read: {exc}"
            continue
        if any("\udc80" <= ch <= "\udcff" for f in fields for ch in f):
            yield start, None, "line is not valid UTF-8"
            continue
        if header is None and header_error is None:
            names = [f.strip() for f in fields]
            if any(not n for n in names):
                header_error = "CSV header has an empty column name"
            elif len(set(names)) != len(names):
                header_error = "CSV header repeats a column name"
            header = names
        elif header_error is not None:
            yield start, None, header_error
        elif header is not None and len(fields) != len(header):
            yield start, None, f"CSV row has {len(fields)} fields, the header has {len(header)}"
        elif header is not None:
            yield start, {k: v for k, v in zip(header, fields, strict=True) if v}, None
    if pending:
        yield start, None, "CSV record has an unclosed quote at the end of the file"
