"""The `--series` file's lines: one bucket per second and view, written as the run goes (pure).

Rules:
- Two views of the same calls: `by: "scheduled"` places every call (dropped ones too)
  at its scheduled time (its send without a schedule), `by: "sent"` places each sent
  call at its send, so a burst of late calls shows.
- A second is written once its calls should all be in: `take(before)` hands over the
  buckets that end before `before` (the caller gives now minus the longest a call can
  take). A late straggler makes a second line for the same second: the lines are
  mergeable counters and histograms (series.Bucket), and a reader adds them up.
- Memory is the seconds not yet written, whatever the run's length.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from engine.core.records import Result
from engine.core.series import Bucket, Figures, Series, make_call, place

#: The first line's key, and the format's version.
HEADER_KEY = "adbatch_series"
VERSION = 1
_UNBOUNDED = 1 << 40


def bucket_line(t: float, by: str, bucket: Bucket) -> dict[str, Any]:
    """One line: the bucket at `t` seconds from the start, placed `by` "scheduled" or
    "sent" time."""
    return {"t": round(t, 6), "by": by, **bucket.to_dict()}


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
        )
        if call is None:
            self.invalid += 1
        else:
            place(self.by_start, self.by_send, call)

    def take(self, before: float) -> list[dict[str, Any]]:
        """The lines of the seconds that end at or before `before` (epoch seconds)."""
        lines = [bucket_line(t, "scheduled", b) for t, b in self.by_start.take(before)]
        lines += [bucket_line(t, "sent", b) for t, b in self.by_send.take(before)]
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
            head = line
        elif line.get("end") is True:
            elapsed = float(line.get("elapsed_s") or 0.0)
            invalid = int(line.get("invalid") or 0)
            figures.invalid += invalid
            figures.events += invalid
        elif "t" in line and head.get("start") is not None:
            try:
                figures.add_line(line, origin=float(head["start"]))
            except (TypeError, ValueError, AttributeError):
                bad += 1
        else:
            bad += 1
    return figures, head, elapsed, bad
