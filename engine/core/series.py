"""A run's figures and their per-second series, from live results or output records (pure).

Rules:
- One accumulator (`Figures`) serves the live run, `--summary` and `adbatch report`,
  so the report recomputed from a file says what the run said.
- Two latencies per call: `latency` from the send (what the server took) and
  `corrected` from the scheduled time (what a user arriving on schedule waited, wrk2's
  coordinated-omission correction). Without a schedule the two are the same.
- Memory does not grow with run length: the histograms are log-linear (stats.py), and
  the series keeps at most `max_points` buckets spanning at most `max_points` widths:
  past that, neighbours merge and the bucket width doubles (1 s, 2 s, 4 s, ...;
  buckets.py), however far apart the records' times are.
- A call whose times (start, send, end) lie past `FAR` seconds from the epoch (1e300,
  epoch milliseconds by mistake) or whose correction overflows is counted, in the
  totals and histograms, but placed on no second: it would widen every bucket to
  millennia, or overflow a float.
- `rate` is vegeta's: the calls sent over the span in which they were sent (first send
  to last send; a dropped call counts at its scheduled time, so a run that drops calls
  shows a lower rate), not over the wait for their answers; `throughput`, the ok
  answers over the run's span (first start to last answer), is the figure that includes
  that wait. A call counts at its first send (`Call.first_sent`): a record keeps only
  its last attempt's `sent_at` (from which `latency_ms` runs), so a retried call with a
  schedule counts at its scheduled time, or the retries' backoff would stretch the span.
  A `--series` file's scheduled lines carry the span of their calls' first sends
  (`first_sent`, `last_sent`), so its rate is the records'; a file without them knows
  the sends to the second: its span is whole seconds.
- No call is placed before the series' origin: a call sent a fraction of a millisecond
  before the schedule's start (a timer fires up to 1 ms early under uvloop) is placed in
  its first second, not at -1 s.
- A call is placed in time by its scheduled time when it has one, else by its send
  (`series`); a second series (`sends`) places each sent call by its send, so a burst of
  late calls shows there, with the seconds of calls in flight (`busy`).
- Distinct statuses and error kinds are bounded per bucket and per run, the rest
  counted under one "(other)" entry (buckets.py), as error texts are.
- A bucket is mergeable (counters and log-linear histograms): the `--series` file is one
  bucket per line (`bucket_line`), and `adbatch report` adds the lines back up
  (`Figures.add_line`); two lines for the same second simply add.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.core.buckets import MAX_POINTS as MAX_POINTS
from engine.core.buckets import RUN_KEYS, add_keys, count_key
from engine.core.buckets import Bucket as Bucket
from engine.core.buckets import Series as Series
from engine.core.records import ErrorKind, RecordLine, Result
from engine.core.stats import PERCENTILES, Histogram

#: Times placed in the series are within this many seconds of the epoch (31,700 years).
FAR = 1e12
#: The label of a failure whose record names no kind (a record of an older version).
_UNNAMED = "error"
_SETTLE = 256


def _pcts(hist: Histogram) -> dict[str, float | None]:
    out: dict[str, float | None] = {"min": round(hist.min, 3) if hist.count else None}
    for p in PERCENTILES:
        out["p" + f"{p:g}"] = None if (v := hist.percentile(p)) is None else round(v, 3)
    out["max"] = round(hist.max, 3) if hist.count else None
    out["mean"] = round(hist.total / hist.count, 3) if hist.count else None
    return out


@dataclass(frozen=True, slots=True)
class Call:
    """One call as the series place it (from a result, a record or a test)."""

    start: float  # the scheduled time, else the send
    key: str  # the status, or the error kind when nothing was answered
    kind: str | None  # the error kind of a failure
    dropped: bool
    ok: bool
    latency_ms: float | None
    corrected: float | None
    sent_at: float | None
    first_sent: float  # when it was first sent, as `rate` counts it (a dropped call: start)


def place(series: Series, sends: Series | None, call: Call) -> None:
    """Add `call` to `series` (by its start) and to `sends` (by its send, never before
    the origin)."""
    bucket = series.at(call.start)
    bucket.sent_between(call.first_sent, call.first_sent)
    count_key(bucket.statuses, call.key)
    if not call.ok:
        count_key(bucket.kinds, call.kind or _UNNAMED)
    if call.dropped:
        bucket.dropped += 1
        return
    _count(bucket, call)
    if sends is None or call.sent_at is None:
        return
    t = max(call.sent_at, sends.origin)  # sent a hair early: in the first second
    sent = sends.at(t)
    count_key(sent.statuses, call.key)
    if not call.ok:
        count_key(sent.kinds, call.kind or _UNNAMED)
    _count(sent, call)
    # Seconds in flight, cut at bucket edges (a call rarely spans more than two).
    end = call.sent_at + (call.latency_ms or 0.0) / 1000.0
    while t < end:
        edge = sends.origin + (math.floor((t - sends.origin) / sends.width) + 1) * sends.width
        sends.at(t).busy += min(end, edge) - t
        t = edge


def _count(bucket: Bucket, call: Call) -> None:
    bucket.calls += 1
    if call.ok:
        bucket.ok += 1
    else:
        bucket.errors += 1
    if call.latency_ms is not None:
        bucket.latency.record(call.latency_ms)
    if call.corrected is not None:
        bucket.corrected.record(call.corrected)


def make_call(
    *,
    status: int | None,
    ok: bool,
    error_kind: str | None,
    latency_ms: float | None,
    sent_at: float | None,
    scheduled_at: float | None,
    attempts: int = 1,
) -> Call | None:
    """The call to place (None: not timed, an invalid line)."""
    corrected = latency_ms
    if latency_ms is not None and sent_at is not None and scheduled_at is not None:
        corrected = max(0.0, (sent_at - scheduled_at) * 1000.0) + latency_ms
        if not math.isfinite(corrected):  # absurd times: not a latency anyone waited
            corrected = None
    start = scheduled_at if scheduled_at is not None else sent_at
    if start is None:
        return None
    key = str(status) if status is not None else (error_kind or _UNNAMED)
    dropped = error_kind == ErrorKind.DROPPED
    first = start if sent_at is None else sent_at
    if attempts > 1 and scheduled_at is not None:
        # sent_at is the last attempt's; the first went out on schedule (give or take
        # the client's lateness, which a retried call's record no longer shows).
        first = min(first, scheduled_at)
    return Call(start, key, error_kind, dropped, ok, latency_ms, corrected, sent_at, first)


def _near(call: Call, end: float) -> bool:
    """True when `call` (ending at `end`) can be placed in time (`FAR`)."""
    sent = call.start if call.sent_at is None else call.sent_at
    done = sent + (call.latency_ms or 0.0) / 1000.0
    return (
        -FAR <= call.start <= FAR
        and -FAR <= end <= FAR
        and -FAR <= sent <= FAR
        and -FAR <= done <= FAR
    )


@dataclass(slots=True)
class Figures:
    """Counters, histograms and the series of one run."""

    max_points: int = MAX_POINTS
    events: int = 0
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    dropped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    corrected: Histogram = field(default_factory=Histogram)
    first: float | None = None
    last: float | None = None
    #: The first and last send of a call, a dropped one at its scheduled time (`rate`).
    first_sent: float | None = None
    last_sent: float | None = None
    #: The same to the second, from a `--series` file whose lines do not hold them.
    seconds_sent: tuple[float, float] | None = None
    series: Series | None = None
    #: The sent calls by their send time (a burst of late calls shows here).
    sends: Series | None = None
    #: Start of the series (the run's start); None: the earliest of the first records.
    origin: float | None = None
    _pending: list[Call] = field(default_factory=list)

    def add(
        self,
        *,
        status: int | None,
        ok: bool,
        error_kind: str | None,
        latency_ms: float | None,
        sent_at: float | None,
        scheduled_at: float | None = None,
        attempts: int = 1,
    ) -> None:
        self.events += 1
        if error_kind == ErrorKind.INVALID:
            self.invalid += 1
            return
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            count_key(self.errors, error_kind or _UNNAMED, limit=RUN_KEYS)
        self.dropped += error_kind == ErrorKind.DROPPED
        key = str(status) if status is not None else (error_kind or _UNNAMED)
        count_key(self.statuses, key, limit=RUN_KEYS)
        call = make_call(
            status=status,
            ok=ok,
            error_kind=error_kind,
            latency_ms=latency_ms,
            sent_at=sent_at,
            scheduled_at=scheduled_at,
            attempts=attempts,
        )
        corrected = latency_ms if call is None else call.corrected
        if latency_ms is not None:
            self.latency.record(latency_ms)
        if corrected is not None:
            self.corrected.record(corrected)
        end = 0.0 if call is None else call.start + (corrected or 0.0) / 1000.0
        if call is None or not _near(call, end):
            return
        if self.first is None or call.start < self.first:
            self.first = call.start
        if self.last is None or end > self.last:
            self.last = end
        self._sent_span(call.first_sent, call.first_sent)
        if self.series is None and self.origin is not None:
            self._open(self.origin)
        if self.series is None:
            # Records come in completion order: wait for a few before fixing the origin
            # at the earliest start, so the first bucket is a whole one.
            self._pending.append(call)
            if len(self._pending) >= _SETTLE:
                self.timeline()
            return
        place(self.series, self.sends, call)

    def _sent_span(self, first: float, last: float) -> None:
        if self.first_sent is None or first < self.first_sent:
            self.first_sent = first
        if self.last_sent is None or last > self.last_sent:
            self.last_sent = last

    def _seconds_sent(self, at: float) -> None:
        span = self.seconds_sent or (at, at + 1.0)
        self.seconds_sent = (min(span[0], at), max(span[1], at + 1.0))

    def _open(self, origin: float) -> None:
        self.series = Series(origin=origin, max_points=self.max_points)
        self.sends = Series(origin=origin, max_points=self.max_points)

    def timeline(self) -> Series | None:
        """The per-second series (None before any timed record)."""
        if self._pending:
            if self.series is None:
                self._open(min(c.start for c in self._pending))
            assert self.series is not None
            for call in self._pending:
                place(self.series, self.sends, call)
            self._pending.clear()
        return self.series

    def add_line(self, line: dict[str, Any], *, origin: float) -> None:
        """One bucket line of a `--series` file (`bucket_line`): its counters, and for
        the scheduled view, the run's totals too."""
        bucket = Bucket.from_dict(line)
        at = origin + float(line["t"])
        if not -FAR <= at <= FAR:
            raise ValueError(f"t out of range: {at}")
        if self.series is None:
            self._open(origin)
        assert self.series is not None
        assert self.sends is not None
        if line.get("by") == "sent":
            self.sends.at(at).merge(bucket)
            if bucket.calls:  # sent in this second: the span is known to the second
                self._seconds_sent(at)
            return
        self.series.at(at).merge(bucket)
        first, last = line.get("first_sent"), line.get("last_sent")
        if first is not None and last is not None:  # the first sends, to the microsecond
            self._sent_span(origin + float(first), origin + float(last))
        elif bucket.dropped:  # a dropped call counts in the span at its scheduled second
            self._seconds_sent(at)
        n = bucket.calls + bucket.dropped
        self.events += n
        self.ok += bucket.ok
        self.failed += n - bucket.ok
        self.dropped += bucket.dropped
        add_keys(self.statuses, bucket.statuses, limit=RUN_KEYS)
        add_keys(self.errors, bucket.kinds, limit=RUN_KEYS)
        self.latency.merge(bucket.latency)
        self.corrected.merge(bucket.corrected)
        if n:
            self.first = at if self.first is None else min(self.first, at)
            end = at + 1.0
            self.last = end if self.last is None else max(self.last, end)

    def add_result(self, result: Result) -> None:
        self.add(
            status=result.status,
            ok=result.ok,
            error_kind=result.error_kind,
            latency_ms=result.latency_ms,
            sent_at=result.sent_at,
            scheduled_at=result.scheduled_at,
            attempts=result.attempts,
        )

    def add_record(self, record: RecordLine) -> None:
        """One output line, as `records.parse_record` read it."""
        attempts = record.fields.get("attempts")  # not an int: a record of another version
        self.add(
            status=record.status,
            ok=record.ok,
            error_kind=record.error_kind,
            latency_ms=record.latency_ms,
            sent_at=record.sent_at,
            scheduled_at=record.scheduled_at,
            attempts=attempts if type(attempts) is int else 1,
        )

    @property
    def elapsed_s(self) -> float:
        if self.first is None or self.last is None:
            return 0.0
        return max(0.0, self.last - self.first)

    @property
    def sent(self) -> int:
        return self.events - self.invalid - self.dropped

    @property
    def sent_s(self) -> float:
        """Seconds from the first send to the last (a dropped call's: its scheduled time)."""
        if self.first_sent is None or self.last_sent is None:
            if self.seconds_sent is None:
                return 0.0
            return self.seconds_sent[1] - self.seconds_sent[0]
        return max(0.0, self.last_sent - self.first_sent)

    @property
    def rate(self) -> float:
        """Calls sent per second, over the span in which they were sent (vegeta's rate)."""
        span = self.sent_s
        return self.sent / span if span > 0 else 0.0

    def to_dict(self, *, elapsed_s: float | None = None) -> dict[str, Any]:
        """The figures as plain JSON types (the `--summary` file)."""
        elapsed = self.elapsed_s if elapsed_s is None else elapsed_s
        series = []
        width = 1.0
        timeline = self.timeline()
        if timeline is not None:
            width = timeline.width
            for offset, b in timeline.points():
                series.append(
                    {
                        "t": round(offset, 3),
                        "rate": round(b.calls / width, 3),
                        "scheduled": round((b.calls + b.dropped) / width, 3),
                        "ok": b.ok,
                        "errors": b.errors,
                        "dropped": b.dropped,
                        "statuses": dict(sorted(b.statuses.items())),
                        "latency_ms": _pcts(b.latency),
                        "corrected_latency_ms": _pcts(b.corrected),
                    }
                )
        sends = []
        sends_width = width
        if self.sends is not None:
            sends_width = self.sends.width
            lead = (self.sends.origin - timeline.origin) if timeline is not None else 0.0
            for offset, b in self.sends.points():
                sends.append(
                    {
                        "t": round(lead + offset, 3),
                        "rate": round(b.calls / sends_width, 3),
                        "errors": b.errors,
                        "in_flight": round(b.busy / sends_width, 3),
                        "latency_ms": _pcts(b.latency),
                    }
                )
        return {
            "events": self.events,
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed - self.dropped,  # as the summary line: dropped apart
            "invalid": self.invalid,
            "dropped": self.dropped,
            "elapsed_s": round(elapsed, 6),
            "sent_s": round(self.sent_s, 6),
            "rate": round(self.rate, 3),
            "throughput": round(self.ok / elapsed, 3) if elapsed > 0 else 0.0,
            "latency_ms": _pcts(self.latency),
            "corrected_latency_ms": _pcts(self.corrected),
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(sorted(self.errors.items(), key=lambda kv: -kv[1])),
            "start": self.first,
            "series_width_s": width,
            "series": series,
            "sends_width_s": sends_width,
            "sends": sends,
            "latency_histogram": coarse_bins(self.latency),
        }


def coarse_bins(hist: Histogram, *, per_decade: int = 10) -> list[dict[str, float]]:
    """The histogram in log bins of 1/`per_decade` of a decade: [{low, high, count}]."""
    out: dict[int, list[float]] = {}
    for low, _, count in hist.bins():
        index = math.floor(math.log10(low) * per_decade + 1e-9)
        if index in out:
            out[index][2] += count
        else:
            out[index] = [10 ** (index / per_decade), 10 ** ((index + 1) / per_decade), count]
    return [
        {"low": round(lo, 4), "high": round(hi, 4), "count": int(n)}
        for lo, hi, n in (out[k] for k in sorted(out))
    ]
