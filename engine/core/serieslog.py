"""The `--series` file's lines: one bucket per second and view, written as the run goes (pure).

Rules:
- Two views of the same calls: `by: "scheduled"` places every call (dropped ones too)
  at its scheduled time (its send without a schedule), `by: "sent"` places each sent
  call at its send, so a burst of late calls shows.
- A scheduled line also holds the span of its calls' first sends, `first_sent` and
  `last_sent` in seconds from the start (series.Call.first_sent), so the rate a report
  reads from the file is the records' (sent over the span in which they were sent), not
  one rounded out to whole seconds.
- A second is written once its calls should all be in: `take(before)` hands over the
  buckets that end before `before` (the caller gives now minus the longest a call can
  take). A late straggler makes a second line for the same second: the lines are
  mergeable counters and histograms (series.Bucket), and a reader adds them up.
- Memory is the seconds not yet written, whatever the run's length.
- Reading (`read_series`, the format's one reader) trusts no value: a header whose
  fields have the wrong type is refused (`SeriesError`, one line); a second's line or
  an end line with a value of the wrong type or out of range (a count that is not a
  whole number from 0 to `MAX_COUNT`, a time or a latency that is not a finite number,
  `ok` and `errors` that do not add up to `calls`, as every line written does) is
  counted as unreadable and skipped, as a torn line is. A header without `start` (the
  time its seconds count from; null only in a file of no second) is refused too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from engine.core.errors import InputError
from engine.core.records import Result
from engine.core.series import FAR, Bucket, Figures, Series, make_call, place

#: The first line's key, and the format's version.
HEADER_KEY = "adbatch_series"
VERSION = 1
_UNBOUNDED = 1 << 40
#: The largest count a line may hold (calls of one second, a histogram's bucket).
MAX_COUNT = 1 << 32
#: The header's fields and the types a reader can show.
_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "start": (int, float),
    "mode": str,
    "target": str,
    "inputs": list,
    "options": dict,
}


def bucket_line(t: float, by: str, bucket: Bucket, *, origin: float) -> dict[str, Any]:
    """One line: the bucket at `t` seconds from the start (`origin`), placed `by`
    "scheduled" or "sent" time."""
    line = {"t": round(t, 6), "by": by, **bucket.to_dict()}
    if by == "scheduled" and bucket.first_sent is not None and bucket.last_sent is not None:
        line["first_sent"] = round(bucket.first_sent - origin, 6)
        line["last_sent"] = round(bucket.last_sent - origin, 6)
    return line


class SecondLog:
    """Per-second buckets of both views from `origin` (epoch seconds), until taken."""

    __slots__ = ("by_send", "by_start", "invalid")

    def __init__(self, *, origin: float) -> None:
        self.by_start = Series(origin=origin, max_points=_UNBOUNDED)
        self.by_send = Series(origin=origin, max_points=_UNBOUNDED)
        self.invalid = 0

    def add(self, result: Result) -> None:
        call = make_call(
            status=result.status,
            ok=result.ok,
            error_kind=result.error_kind,
            latency_ms=result.latency_ms,
            sent_at=result.sent_at,
            scheduled_at=result.scheduled_at,
            attempts=result.attempts,
        )
        if call is None:
            self.invalid += 1
        else:
            place(self.by_start, self.by_send, call)

    def take(self, before: float) -> list[dict[str, Any]]:
        """The lines of the seconds that end at or before `before` (epoch seconds)."""
        origin = self.by_start.origin
        lines = [
            bucket_line(t, "scheduled", b, origin=origin) for t, b in self.by_start.take(before)
        ]
        lines += [bucket_line(t, "sent", b, origin=origin) for t, b in self.by_send.take(before)]
        lines.sort(key=lambda line: line["t"])
        return lines

    def take_all(self) -> list[dict[str, Any]]:
        return self.take(float("inf"))


def is_header(line: bytes) -> bool:
    """True when `line` is a `--series` file's first line."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and HEADER_KEY in data


class SeriesError(InputError):
    """A `--series` file whose header adbatch cannot read."""


def read_series(lines: Iterable[bytes]) -> tuple[Figures, dict[str, Any], float | None, int]:
    """(figures, header, elapsed seconds from the end line or None, unreadable lines) of
    a `--series` file; a file cut short (no end line) is read as far as it goes."""
    figures = Figures()
    head: dict[str, Any] = {}
    elapsed: float | None = None
    bad = 0
    for raw in lines:
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(line, dict):
            bad += 1
        elif HEADER_KEY in line:
            head = _header(line)
        elif line.get("end") is True and _end_ok(line):
            elapsed = float(line.get("elapsed_s") or 0.0)
            invalid = line.get("invalid") or 0
            figures.invalid += invalid
            figures.events += invalid
        elif "t" in line and head.get("start") is None:
            raise SeriesError("its header's 'start' is null: its seconds count from no time")
        elif "t" in line and _bucket_ok(line):
            try:
                figures.add_line(line, origin=float(head["start"]))
            except ValueError:  # its time, from the start, is past FAR
                bad += 1
        else:
            bad += 1
    return figures, head, elapsed, bad


def _header(line: dict[str, Any]) -> dict[str, Any]:
    """The header `line`, when its fields have their types (else SeriesError)."""
    if type(line[HEADER_KEY]) is not int or line[HEADER_KEY] != VERSION:
        raise SeriesError(f"its header names another version than {VERSION}, the one adbatch reads")
    if "start" not in line:
        raise SeriesError("its header has no 'start', the time its seconds count from")
    for name, kind in _HEADER_TYPES.items():
        value = line.get(name)
        if value is not None and (type(value) is bool or not isinstance(value, kind)):
            raise SeriesError(f"its header's {name!r} is not what adbatch writes there")
    start = line.get("start")
    if start is not None and not -FAR <= start <= FAR:
        raise SeriesError("its header's 'start' is not a time")
    try:
        orjson.dumps(line)  # a number past 64 bits anywhere could not go in --summary
    except orjson.JSONEncodeError:
        raise SeriesError("its header holds a number past 64 bits or is nested too deep") from None
    return line


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _number(value: object, *, low: float = -math.inf) -> bool:
    """A finite number (not a bool, an int within 64 bits) no lower than `low`."""
    if type(value) is int:
        return low <= value and -(1 << 63) <= value < 1 << 63
    return type(value) is float and math.isfinite(value) and low <= value


def _counts(value: object) -> bool:
    """A table of names to counts (statuses, kinds)."""
    return isinstance(value, dict) and all(_count(n) for n in value.values())


def _end_ok(line: Mapping[str, Any]) -> bool:
    elapsed, invalid = line.get("elapsed_s"), line.get("invalid")
    return (elapsed is None or (_number(elapsed, low=0.0) and elapsed <= FAR)) and (
        invalid is None or _count(invalid)
    )


def _histogram_ok(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    buckets, low = data.get("buckets", {}), data.get("min")
    return (
        isinstance(buckets, dict)
        and all(k.isascii() and k.isdigit() and len(k) < 10 for k in buckets)
        and all(_count(n) for n in buckets.values())
        and _count(data.get("count", 0))
        and _number(data.get("total", 0.0))
        and (low is None or _number(low))
        and _number(data.get("max", 0.0))
    )


def _sent_span_ok(first: object, last: object) -> bool:
    """Both absent, or two times (seconds from the start) in order."""
    if first is None and last is None:
        return True
    return (
        isinstance(first, int | float)
        and isinstance(last, int | float)
        and _number(first, low=-FAR)
        and _number(last, low=-FAR)
        and first <= last <= FAR
    )


def _bucket_ok(line: Mapping[str, Any]) -> bool:
    """`line` holds a second's values, each of its type and in range (Bucket.from_dict
    and Figures.add_line read it without a check)."""
    return (
        _number(line.get("t"))
        and line.get("by", "scheduled") in ("scheduled", "sent")
        and all(_count(line.get(k, 0)) for k in ("calls", "ok", "errors", "dropped"))
        and line.get("ok", 0) + line.get("errors", 0) == line.get("calls", 0)
        and all(_counts(line.get(k, {})) for k in ("statuses", "kinds"))
        and _number(line.get("busy_s", 0.0), low=0.0)
        and _sent_span_ok(line.get("first_sent"), line.get("last_sent"))
        and _histogram_ok(line.get("latency", {}))
        and _histogram_ok(line.get("corrected", {}))
    )
