"""Access-log lines of earlier delivery calls -> events, for `adbatch replay` (pure parsing).

Rules:
- Combined log format (and common, without referer and user agent), as nginx and
  Apache write it: `IP - - [10/Oct/2026:13:55:36 +0000] "GET /delivery/retailmedia?...
  HTTP/1.1" 200 512 "REFERER" "USER-AGENT"`.
- The query string is parsed back into the event's parameters (form decoding, the last
  of a repeated key wins), the log time becomes its `timestamp`, the client address
  its `ip`, referer and user agent its headers ("-" means absent).
- Every line yields one item, as in sources.py: a line that is not a GET of the delivery
  path, or not a log line at all, becomes an Invalid naming the line.
- Sniffing: a file is read as an access log with `--access-log`, or when its name ends
  in `.log` (optionally `.gz`) or its first line parses as one.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import re
import stat
import sys
import zlib
from collections.abc import Generator, Iterable
from dataclasses import replace
from urllib.parse import parse_qsl, urlsplit

from engine.config import DEFAULT_MAX_LINE_BYTES
from engine.core.events import NO_DEFAULTS, EventDefaults, Invalid, Item, ReadCounts, make_event
from engine.files.sources import (
    STDIN,
    STDIN_NAME,
    _open_binary,
    _physical_lines,
    _read_error,
    _TooLong,
    is_gzipped,
    read_items,
)
from engine.files.storage import StorageOptions, is_url, source_name

DELIVERY_SUFFIX = "/delivery/retailmedia"
_HEAD = 4096  # bytes looked at to sniff an access log

_LINE = re.compile(
    r'(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r"(?P<status>\d{3}|-) (?P<size>\d+|-)"
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<ua>(?:[^"\\]|\\.)*)")?'
)
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_TIME = re.compile(
    r"(\d{1,2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))? ([+-])(\d{2})(\d{2})"
)


def parse_log_time(text: str) -> float | None:
    """`10/Oct/2026:13:55:36 -0700` (optionally with fractional seconds) -> epoch seconds."""
    m = _TIME.fullmatch(text.strip())
    if m is None or m.group(2).lower() not in _MONTHS:
        return None
    day, _, year, hour, minute, second, frac, sign, oh, om = m.groups()
    offset = _dt.timedelta(hours=int(oh), minutes=int(om))
    try:  # an offset of 24 hours or more is no time zone (ValueError), as 31/Feb is no day
        tz = _dt.timezone(offset if sign == "+" else -offset)
        moment = _dt.datetime(
            int(year),
            _MONTHS[m.group(2).lower()],
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=tz,
        )
    except ValueError:
        return None
    return moment.timestamp() + (float("0." + frac) if frac else 0.0)


def _unescape(text: str) -> str:
    return text.replace('\\"', '"').replace("\\\\", "\\")


def parse_log_line(line: str) -> tuple[dict[str, object] | None, str | None]:
    """One access-log line -> (event object, None) or (None, what is wrong)."""
    m = _LINE.match(line)
    if m is None:
        return None, "not an access-log line (combined log format expected)"
    method, _, rest = _unescape(m.group("request")).partition(" ")
    target = rest.rsplit(" ", 1)[0] if " " in rest else rest
    url = urlsplit(target)
    if method != "GET" or not url.path.endswith(DELIVERY_SUFFIX):
        return None, f"not a delivery call: {method} {url.path[:80]!r}"
    timestamp = parse_log_time(m.group("time"))
    if timestamp is None:
        return None, f"log time {m.group('time')[:40]!r} is not like 10/Oct/2026:13:55:36 +0000"
    obj: dict[str, object] = dict(parse_qsl(url.query))
    for reserved in ("id", "timestamp", "ip", "user-agent", "referer"):
        obj.pop(reserved, None)  # the log's own values win over look-alike parameters
    obj["timestamp"] = timestamp
    if m.group("ip") != "-":
        obj["ip"] = m.group("ip")
    for key, group in (("referer", "referer"), ("user-agent", "ua")):
        value = m.group(group)
        if value and value != "-":
            obj[key] = _unescape(value)
    return obj, None


def is_access_log(path: str, options: StorageOptions = ()) -> bool:
    """Whether `auto` reads this input as an access log (by name, else its first line).

    Only stdin and a regular file are looked into: a named pipe, a device or `/dev/fd/N`
    is opened once, to be read (a look would take its first bytes, or its writer), so
    such an input is an access log only by its name or `--access-log`."""
    name = path.lower().removesuffix(".gz")
    if name.endswith(".log"):
        return True
    if path != STDIN and not is_url(path) and not _is_regular(path):
        return False  # an object (a URL) is looked into like a regular file
    try:
        head = _head(path, options)
    except (OSError, EOFError, ValueError, zlib.error):
        return False
    first = head.lstrip().split(b"\n", 1)[0].decode("utf-8", "replace")
    return _LINE.match(first) is not None


def _head(path: str, options: StorageOptions) -> bytes:
    """An input's first bytes as its reader will see them (gunzipped). stdin is only
    peeked, gzip too: a GzipFile over stdin would pull compressed bytes out of stdin's
    buffer into its own, lost to the reader, which opens stdin again."""
    if path != STDIN:
        stream, close = _open_binary(path, options=options)
        try:
            return stream.read(_HEAD)
        finally:
            stream.close()
            close()
    stdin = sys.stdin.buffer
    if not isinstance(stdin, io.BufferedReader):
        return b""  # no peeking without reading: read by name or --access-log only
    if not is_gzipped(STDIN, stdin):
        return stdin.peek(_HEAD)[:_HEAD]
    return zlib.decompressobj(wbits=31).decompress(stdin.peek(_HEAD), _HEAD)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return True  # opening it will say what is wrong


def read_log_items(
    path: str,
    *,
    defaults: EventDefaults = NO_DEFAULTS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    counts: ReadCounts | None = None,
    first_seq: int = 0,
    storage_options: StorageOptions = (),
) -> Generator[Item, None, None]:
    counts = counts if counts is not None else ReadCounts()
    name = STDIN_NAME if path == STDIN else source_name(path)
    seq = first_seq
    # Bytes read are counted, as for event files (the progress display's share of the size).
    stream, close = _open_binary(path, counts, storage_options)
    try:
        for line_no, data in _physical_lines(stream, max_line_bytes):
            source = f"{name}:{line_no}"
            if data is _TooLong:
                yield Invalid(seq, source, None, f"line longer than {max_line_bytes} bytes")
            elif isinstance(data, Exception):
                yield Invalid(seq, source, None, _read_error(data))
            else:
                assert isinstance(data, bytes)
                if not data.strip():
                    counts.blank_lines += 1
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    yield Invalid(seq, source, None, "line is not valid UTF-8")
                    seq += 1
                    continue
                obj, error = parse_log_line(text)
                if obj is None:
                    yield Invalid(seq, source, None, error or "unreadable line")
                else:
                    yield make_event(obj, seq=seq, source=source, defaults=defaults)
            seq += 1
    finally:
        if path != STDIN:
            stream.close()
        close()


def read_replay_items(
    paths: Iterable[str],
    *,
    input_format: str = "auto",
    defaults: EventDefaults = NO_DEFAULTS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    counts: ReadCounts | None = None,
    storage_options: StorageOptions = (),
) -> Generator[Item, None, None]:
    """Every record of every input (event files or access logs; paths or URLs), seq
    0, 1, ... in order."""
    counts = counts if counts is not None else ReadCounts()
    seq = 0
    options = storage_options
    for path in paths:
        if input_format == "log" or (input_format == "auto" and is_access_log(path, options)):
            items: Iterable[Item] = read_log_items(
                path,
                defaults=defaults,
                max_line_bytes=max_line_bytes,
                counts=counts,
                first_seq=seq,
                storage_options=options,
            )
        else:
            fmt = "auto" if input_format == "log" else input_format
            items = (
                replace(item, seq=seq + item.seq)
                for item in read_items(
                    [path],
                    input_format=fmt,  # type: ignore[arg-type]
                    defaults=defaults,
                    max_line_bytes=max_line_bytes,
                    counts=counts,
                    storage_options=options,
                )
            )
        last = seq - 1
        for item in items:
            last = item.seq
            yield item
        seq = last + 1
