"""Live figures of a run: what the metrics endpoint and the dashboard read (pure).

Rules:
- A `Tally` is additive: a snapshot of one process's counters, the delta between two
  snapshots (what a --workers child sends its parent about twice a second) and the sum
  of those deltas (what the parent serves) are the same type; `add` and `minus` are
  exact for every counter and histogram bucket.
- It is copied from the counters the run keeps anyway (RunStats, the load driver's
  figures) at the observer's pace, never per call: the per-call path pays nothing here.
- Latencies are milliseconds on stats.py's log-linear histograms; `cumulative` gives
  Prometheus buckets in seconds, each log bucket placed by its middle (within 1%).
- A `Snapshot` is a Tally with the run's gauges (calls in flight, target rate, token,
  progress) at one moment; the servers render it, nothing else.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from engine.core.model import ReadCounts
from engine.core.records import ErrorKind, Result
from engine.core.stats import Histogram, RunStats

#: The label of "none" (an ok call's error kind, the status of a call never answered).
NONE = ""
DROPPED = "dropped"
#: The error kinds of ok records: none, and --dry-run's (an ok record that sent nothing).
OK_KINDS = (NONE, ErrorKind.DRY_RUN)


@dataclass(slots=True)
class Tally:
    """Counters and histograms of a run so far (or of a slice of it)."""

    #: (status, error kind) -> calls finished; "" for no status / no error.
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    attempts: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)  # ms, from the send
    corrected: Histogram = field(default_factory=Histogram)  # ms, from the schedule
    lag: Histogram = field(default_factory=Histogram)  # ms, schedule -> send
    token_renewals: int = 0
    events_read: int = 0
    scheduled: int = 0  # load and replay: calls that came due

    @property
    def done(self) -> int:
        return sum(self.calls.values())

    @property
    def ok(self) -> int:
        """Calls whose record is ok: answered 2xx, or shown by --dry-run (no status)."""
        return sum(n for (_, kind), n in self.calls.items() if kind in OK_KINDS)

    @property
    def dropped(self) -> int:
        return sum(n for (_, kind), n in self.calls.items() if kind == DROPPED)

    def errors(self) -> Counter[str]:
        """Calls by error kind (invalid and dropped included), ok ones left out."""
        out: Counter[str] = Counter()
        for (_, kind), n in self.calls.items():
            if kind != NONE:
                out[kind] += n
        return out

    def add(self, other: Tally) -> None:
        self.calls.update(other.calls)
        self.attempts += other.attempts
        self.retries.update(other.retries)
        self.latency.merge(other.latency)
        self.corrected.merge(other.corrected)
        self.lag.merge(other.lag)
        self.token_renewals += other.token_renewals
        self.events_read += other.events_read
        self.scheduled += other.scheduled

    def minus(self, base: Tally) -> Tally:
        """What happened since `base`, an earlier snapshot of the same run."""
        return Tally(
            calls=self.calls - base.calls,
            attempts=self.attempts - base.attempts,
            retries=self.retries - base.retries,
            latency=self.latency.minus(base.latency),
            corrected=self.corrected.minus(base.corrected),
            lag=self.lag.minus(base.lag),
            token_renewals=self.token_renewals - base.token_renewals,
            events_read=self.events_read - base.events_read,
            scheduled=self.scheduled - base.scheduled,
        )

    def copy(self) -> Tally:
        out = Tally()
        out.add(self)
        return out


def tally_of(
    stats: RunStats,
    *,
    corrected: Histogram | None = None,
    lag: Histogram | None = None,
    token_renewals: int = 0,
    events_read: int = 0,
    scheduled: int = 0,
) -> Tally:
    """A copy of a run's counters now, as a Tally (the histograms are copied too)."""
    calls: Counter[tuple[str, str]] = Counter()
    not_ok: Counter[int] = Counter()
    for (status, kind), n in stats.failures.items():
        calls[(NONE if status is None else str(status), kind)] += n
        if status is not None:
            not_ok[status] += n
    for status, n in stats.statuses.items():
        if n > not_ok[status]:
            calls[(str(status), NONE)] += n - not_ok[status]
    # The records neither failed nor answered: ok ones with no status, which only
    # --dry-run writes (one per record, as the summary counts them).
    shown = stats.events - sum(calls.values())
    if shown > 0:
        calls[(NONE, ErrorKind.DRY_RUN)] += shown
    return Tally(
        calls=calls,
        attempts=stats.attempts,
        retries=stats.retries.copy(),
        latency=stats.latency.copy(),
        corrected=corrected.copy() if corrected is not None else Histogram(),
        lag=lag.copy() if lag is not None else Histogram(),
        token_renewals=token_renewals,
        events_read=events_read,
        scheduled=scheduled,
    )


def cumulative(hist: Histogram, bounds_s: Sequence[float]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets of `hist` (ms): (le in seconds, calls <= le), +Inf last."""
    counts = [0] * len(bounds_s)
    for low, high, n in hist.bins():
        middle_s = math.sqrt(low * high) / 1000.0
        for i, bound in enumerate(bounds_s):
            if middle_s <= bound:
                counts[i] += n
                break
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(bounds_s, counts, strict=True):
        running += n
        out.append((f"{bound:g}", float(running)))
    out.append(("+Inf", float(hist.count)))
    return out


@dataclass(frozen=True, slots=True)
class TokenView:
    """What the observers show of the run's token (never the token itself)."""

    kind: Literal["static", "dynamic", "none"] = "none"
    ttl: float | None = None  # seconds it may still be sent (None: no limit)
    failed: str | None = None  # the provider gave up: why
    fetched: int = 0
    renewals: int = 0
    failures: int = 0
    waits: int = 0

    def text(self) -> str:
        if self.failed is not None:
            return f"failed: {self.failed}"
        if self.kind != "dynamic":
            return self.kind
        left = "no token yet" if self.ttl is None else f"valid {max(0.0, self.ttl):.0f}s"
        if self.ttl is not None and self.ttl <= 0:
            left = "expired, waiting for a new one"
        return (
            f"{left}; {self.fetched} fetched, {self.renewals} renewals, "
            f"{self.failures} failed, {self.waits} calls waited"
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a run is: `done` of `total` `unit`s (input bytes, events or seconds)."""

    done: float
    total: float
    unit: Literal["bytes", "events", "seconds"]

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at the pace so far; None before there is a pace."""
        if self.unit == "seconds":
            return max(0.0, self.total - self.done)
        if self.done <= 0 or elapsed <= 0:
            return None
        return max(0.0, elapsed * (self.total - self.done) / self.done)


def input_share(counts: ReadCounts, size: int, taken: int, done: int) -> Progress:
    """How much of inputs of `size` bytes is answered: the one home of this arithmetic
    (the terminal's bar and the observers' progress both read it). The reader runs ahead
    of the answers, so the bytes read (compressed for gzip) count in the proportion of
    the records `taken` that are `done`; the total is `size` less the bytes this reader
    never reads (`ReadCounts.bytes_skipped`: a Parquet shard's total is its share)."""
    got = float(counts.bytes_read)
    if taken > done:
        got = counts.bytes_read * done / taken
    return Progress(got, float(max(size - counts.bytes_skipped, 1)), "bytes")


Mode = Literal["run", "load", "replay"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A run's live figures at one moment."""

    mode: Mode
    elapsed: float  # seconds since the run started
    tally: Tally
    in_flight: int = 0
    target_rate: float | None = None  # calls per second asked for; None: no target
    token: TokenView = TokenView()
    progress: Progress | None = None
    finished: bool = False


def record_lag(lag: Histogram, results: Iterable[Result]) -> None:
    """Add each scheduled call's wait from its schedule to its send (ms) to `lag`."""
    for result in results:
        if result.scheduled_at is not None and result.sent_at is not None:
            lag.record(max(0.0, (result.sent_at - result.scheduled_at) * 1000.0))


def record_schedule(into: Tally, results: Iterable[Result]) -> None:
    """Count the scheduled calls among `results` (load, replay) into `into`: calls due
    (`scheduled`), the wait from schedule to send (`lag`) and the latency from the
    schedule (`corrected`, as series.make_call reckons it); a dropped call is due, never
    sent."""
    for result in results:
        due = result.scheduled_at
        if due is None:
            continue
        into.scheduled += 1
        if result.sent_at is not None:
            wait = max(0.0, (result.sent_at - due) * 1000.0)
            into.lag.record(wait)
            if result.latency_ms is not None:
                into.corrected.record(wait + result.latency_ms)
