"""Time buckets of mergeable figures, and a bounded series of them (pure).

Rules:
- A bucket is mergeable (counters and log-linear histograms), so neighbours merge when
  the series coarsens and two `--series` lines for the same second simply add.
- A series costs at most `max_points` buckets and `points()` at most `max_points`
  points, whatever the span of the times placed: past either bound the width doubles
  (1 s, 2 s, 4 s, ...) and neighbours merge. Empty seconds count towards the span, as
  `points()` shows them: two calls a week apart are two buckets a few hours wide, not
  604,800 points (an output finished by a `--resume` days later).
- The width only ever doubles from its start, so floor((t-o)/2w) == floor(floor((t-o)/w)/2)
  holds in floating point too (a division by a power of two is exact): merged buckets
  stay exact.
- Distinct statuses and error kinds are bounded as error texts are (core/figures.py):
  a bucket keeps `BUCKET_KEYS` of them, a run's totals (series.Figures) `RUN_KEYS`, each
  cut to `KEY_CHARS`; the rest are counted under `OTHER_KEY`. A file whose every record
  names its own kind costs what one with a few kinds costs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.core.stats import Histogram

MAX_POINTS = 600
#: Distinct statuses (or kinds) kept per bucket and per run; the rest under OTHER_KEY.
BUCKET_KEYS = 32
RUN_KEYS = 1000
KEY_CHARS = 100
OTHER_KEY = "(other)"


def count_key(counter: Counter[str], key: str, n: int = 1, *, limit: int = BUCKET_KEYS) -> None:
    """Add `n` to `key` (cut short) in `counter`, which keeps at most `limit` keys and
    counts the rest under `OTHER_KEY`."""
    key = key[:KEY_CHARS]
    if key in counter or len(counter) < limit:
        counter[key] += n
    else:
        counter[OTHER_KEY] += n


def add_keys(counter: Counter[str], other: Counter[str], *, limit: int = BUCKET_KEYS) -> None:
    """`count_key` each of `other`'s counts into `counter`."""
    for key, n in other.items():
        count_key(counter, key, n, limit=limit)


@dataclass(slots=True)
class Bucket:
    """What happened in one slice of time."""

    calls: int = 0
    ok: int = 0
    errors: int = 0
    dropped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    corrected: Histogram = field(default_factory=Histogram)
    #: Error kinds of the failed calls (the error table of a report read from a series).
    kinds: Counter[str] = field(default_factory=Counter)
    #: Seconds of calls in flight within the bucket (sends only): / width = mean in flight.
    busy: float = 0.0
    #: The earliest and latest first send of the bucket's calls, a dropped call's at its
    #: scheduled time (the scheduled view: the span of a run's `rate`; series.Call).
    first_sent: float | None = None
    last_sent: float | None = None

    def sent_between(self, first: float, last: float) -> None:
        """Widen the span of first sends to hold `first` to `last`."""
        if self.first_sent is None or first < self.first_sent:
            self.first_sent = first
        if self.last_sent is None or last > self.last_sent:
            self.last_sent = last

    def merge(self, other: Bucket) -> None:
        self.calls += other.calls
        self.ok += other.ok
        self.errors += other.errors
        self.dropped += other.dropped
        add_keys(self.statuses, other.statuses)
        self.latency.merge(other.latency)
        self.corrected.merge(other.corrected)
        add_keys(self.kinds, other.kinds)
        self.busy += other.busy
        if other.first_sent is not None and other.last_sent is not None:
            self.sent_between(other.first_sent, other.last_sent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "ok": self.ok,
            "errors": self.errors,
            "dropped": self.dropped,
            "statuses": dict(self.statuses),
            "kinds": dict(self.kinds),
            "busy_s": round(self.busy, 6),
            "latency": self.latency.to_dict(),
            "corrected": self.corrected.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bucket:
        return cls(
            calls=int(data.get("calls", 0)),
            ok=int(data.get("ok", 0)),
            errors=int(data.get("errors", 0)),
            dropped=int(data.get("dropped", 0)),
            statuses=Counter({str(k): int(v) for k, v in data.get("statuses", {}).items()}),
            latency=Histogram.from_dict(data.get("latency", {})),
            corrected=Histogram.from_dict(data.get("corrected", {})),
            kinds=Counter({str(k): int(v) for k, v in data.get("kinds", {}).items()}),
            busy=float(data.get("busy_s", 0.0)),
        )


class Series:
    """Buckets of `width` seconds from `origin`; at most `max_points` of them, spanning
    at most `max_points` widths."""

    __slots__ = ("_buckets", "_high", "_low", "max_points", "origin", "width")

    def __init__(self, *, origin: float, width: float = 1.0, max_points: int = MAX_POINTS) -> None:
        self.origin = origin
        self.width = width
        self.max_points = max(2, max_points)
        self._buckets: dict[int, Bucket] = {}
        # The lowest and highest index in `_buckets` (meaningless while it is empty).
        self._low = self._high = 0

    def at(self, t: float) -> Bucket:
        index = math.floor((t - self.origin) / self.width)
        bucket = self._buckets.get(index)
        if bucket is not None:
            return bucket
        bucket = self._buckets[index] = Bucket()
        if len(self._buckets) == 1:
            self._low = self._high = index
        else:
            self._low, self._high = min(self._low, index), max(self._high, index)
        if len(self._buckets) > self.max_points:
            self._coarsen()
        # A far time (a record days later) doubles as often as it takes, at once:
        # `points()` fills the gap, so the span is what costs, not the bucket count.
        while self._high - self._low >= self.max_points:
            self._coarsen()
        return self._buckets[math.floor((t - self.origin) / self.width)]

    def _coarsen(self) -> None:
        merged: dict[int, Bucket] = {}
        for index, bucket in self._buckets.items():
            target = merged.get(index // 2)
            if target is None:
                merged[index // 2] = bucket
            else:
                target.merge(bucket)
        self._buckets = merged
        self.width *= 2
        self._low, self._high = self._low // 2, self._high // 2

    def take(self, before: float) -> list[tuple[float, Bucket]]:
        """Remove and return the buckets that end at or before time `before`."""
        done = sorted(i for i in self._buckets if self.origin + (i + 1) * self.width <= before)
        taken = [(i * self.width, self._buckets.pop(i)) for i in done]
        if taken and self._buckets:
            self._low = min(self._buckets)
        return taken

    def points(self) -> list[tuple[float, Bucket]]:
        """(seconds from the origin, bucket), in time order, gaps included as empty."""
        if not self._buckets:
            return []
        return [
            (index * self.width, self._buckets.get(index) or Bucket())
            for index in range(self._low, self._high + 1)
        ]
