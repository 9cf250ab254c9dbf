"""Latency histograms and run counters (pure).

The histogram is log-linear: a value lands in bucket floor(log(v)/log(1 + 1%)), so any
percentile is within 1% of the truth, memory is a few thousand counters at most whatever
the run length, and two histograms merge by adding their counts (workers, shards).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.core.figures import (
    MAX_MESSAGES,
    OTHER_MESSAGES,
    count_message,
    figures,
    request_bytes,
)
from engine.core.records import ErrorKind, Response, Result

if TYPE_CHECKING:
    from engine.core.query import Request

#: The exit code of a run whose --threshold failed (core/thresholds.py).
THRESHOLD_FAILED = 4

_PRECISION = 0.01
_LOG_BASE = math.log1p(_PRECISION)
_MIN_MS = 0.001  # one microsecond: below it every value shares bucket 0
#: Above it every value shares the top bucket (an absurd record's 1e308 would overflow
#: v / _MIN_MS, and its index, to infinity); min, max and the total keep the value.
_MAX_MS = 1e300
_TOP = int(math.log(_MAX_MS / _MIN_MS) / _LOG_BASE)


class Histogram:
    """Mergeable latency histogram in milliseconds."""

    __slots__ = ("_buckets", "count", "max", "min", "total")

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, value_ms: float) -> None:
        v = (value_ms if value_ms < _MAX_MS else _MAX_MS) if value_ms > _MIN_MS else _MIN_MS
        self._buckets[int(math.log(v / _MIN_MS) / _LOG_BASE)] += 1
        self.count += 1
        self.total += value_ms
        if value_ms > self.max:
            self.max = value_ms
        if value_ms < self.min:
            self.min = value_ms

    def record_all(self, values_ms: list[float]) -> None:
        """`record` each of `values_ms` (one call per batch of records)."""
        if not values_ms:
            return
        buckets, log, base, top = self._buckets, math.log, _LOG_BASE, _MAX_MS
        total = self.total  # added one by one, in order: the same float as `record`'s
        for v in values_ms:
            buckets[
                int(log(((v if v < top else top) if v > _MIN_MS else _MIN_MS) / _MIN_MS) / base)
            ] += 1
            total += v
        self.count += len(values_ms)
        self.total = total
        self.max = max(self.max, max(values_ms))
        self.min = min(self.min, min(values_ms))

    def merge(self, other: Histogram) -> None:
        self._buckets.update(other._buckets)
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    def copy(self) -> Histogram:
        hist = Histogram()
        hist.merge(self)
        return hist

    def minus(self, base: Histogram) -> Histogram:
        """What was recorded since `base` (an earlier copy of this histogram): exact
        bucket counts, count and total; min and max are this one's (percentiles stay
        within what was seen)."""
        delta = Histogram()
        delta._buckets = self._buckets - base._buckets
        delta.count = self.count - base.count
        delta.total = self.total - base.total
        if delta.count:
            delta.min, delta.max = self.min, self.max
        return delta

    def percentile(self, p: float) -> float | None:
        """The value at percentile p (0-100), or None when empty."""
        if self.count == 0:
            return None
        if p >= 100:
            return self.max
        rank = max(1, math.ceil(self.count * p / 100))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                if index >= _TOP:  # the top bucket has no middle: its values are unbounded
                    return self.max
                # The bucket's middle, kept inside what was really seen.
                value = _MIN_MS * math.exp((index + 0.5) * _LOG_BASE)
                return min(max(value, self.min), self.max)
        return self.max

    def bins(self) -> list[tuple[float, float, int]]:
        """(low, high, count) of every non-empty bucket, in value order (for plots)."""
        return [
            (_MIN_MS * math.exp(i * _LOG_BASE), _MIN_MS * math.exp((i + 1) * _LOG_BASE), n)
            for i, n in sorted(self._buckets.items())
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            "buckets": dict(self._buckets),
            "count": self.count,
            "total": self.total,
            "min": self.min if self.count else None,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Histogram:
        hist = cls()
        buckets = data.get("buckets", {})
        assert isinstance(buckets, dict)
        for k, v in buckets.items():  # a --series file's: no index past the top bucket
            hist._buckets[min(int(k), _TOP)] += int(v)
        hist.count = int(data.get("count", 0))  # type: ignore[call-overload]
        hist.total = float(data.get("total", 0.0))  # type: ignore[arg-type]
        low = data.get("min")
        hist.min = float(low) if isinstance(low, int | float) else math.inf
        hist.max = float(data.get("max", 0.0))  # type: ignore[arg-type]
        return hist


@dataclass(slots=True)
class RunStats:
    """Counters of one run; the summary is computed from them."""

    events: int = 0
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    blank_lines: int = 0
    unauthorized: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    retries: Counter[str] = field(default_factory=Counter)
    attempts: int = 0  # calls sent, retries included
    #: (status, error kind) of every record that is not ok (the live metrics' labels;
    #: the ok ones are `statuses` less these, so the common path counts nothing more).
    failures: Counter[tuple[int | None, str]] = field(default_factory=Counter)
    #: Error texts of the failed calls, cut short and bounded (core/figures.py).
    messages: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0  # answer bodies, every attempt (the engine counts them)
    bytes_out: int = 0  # requests' URL and headers, every attempt

    def add(
        self,
        *,
        status: int | None,
        ok: bool,
        invalid: bool,
        latency_ms: float | None,
        error_kind: str | None,
        attempts: int = 0,
        error: str | None = None,
    ) -> None:
        self.events += 1
        self.attempts += attempts
        if ok:
            self.ok += 1
        elif invalid:
            self.invalid += 1
            self.failures[(status, error_kind or "invalid")] += 1
        else:
            self.failed += 1
            self.failures[(status, error_kind or "error")] += 1
            if error is not None:
                count_message(self.messages, error)
        if status is not None:
            self.statuses[status] += 1
            if status == 401:
                self.unauthorized += 1
        if error_kind is not None and not invalid:
            self.errors[error_kind] += 1
        if latency_ms is not None:
            self.latency.record(latency_ms)

    def add_result(self, result: Result) -> None:
        """Count one record (the engine's writer, after its retries are counted)."""
        self.add(
            status=result.status,
            ok=result.ok,
            invalid=result.error_kind == ErrorKind.INVALID,
            latency_ms=result.latency_ms,
            error_kind=result.error_kind,
            attempts=result.attempts,
            error=result.error,
        )

    def count_io(self, request: Request, response: Response) -> Response:
        """Count one attempt's bytes (counters only: lengths known at hand); `response`."""
        self.bytes_in += len(response.body)
        self.bytes_out += request_bytes(request)
        return response

    def merge(self, other: RunStats) -> None:
        """Add another run's counters to these (worker processes, shards)."""
        self.events += other.events
        self.ok += other.ok
        self.failed += other.failed
        self.invalid += other.invalid
        self.blank_lines += other.blank_lines
        self.unauthorized += other.unauthorized
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.latency.merge(other.latency)
        self.retries.update(other.retries)
        self.attempts += other.attempts
        self.failures.update(other.failures)
        for message, n in other.messages.items():
            if message in self.messages or len(self.messages) < MAX_MESSAGES:
                self.messages[message] += n
            else:
                self.messages[OTHER_MESSAGES] += n
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out


@dataclass(slots=True)
class TokenStats:
    """Token events of a run with dynamic tokens (the provider counts, the summary shows)."""

    fetched: int = 0  # tokens obtained, the first one included
    renewals: int = 0  # tokens obtained after the first
    after_401: int = 0  # renewals asked for by a 401 rather than by the clock
    requests: int = 0  # token requests sent
    failures: int = 0  # token requests that gave no token
    waits: int = 0  # delivery calls that had to wait for a token
    renewal_ms_total: float = 0.0  # first try to new token, retries included
    renewal_ms_max: float = 0.0

    def record_renewal(self, ms: float) -> None:
        self.renewal_ms_total += ms
        if ms > self.renewal_ms_max:
            self.renewal_ms_max = ms


_NOT_ERRORS = frozenset({ErrorKind.DROPPED, ErrorKind.DRY_RUN})  # not in the line's errors


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of a finished run (what `run()` returns and the CLI prints)."""

    events: int
    ok: int
    #: Calls answered with an error; dropped calls are not failed ones (`dropped`).
    failed: int
    invalid: int
    blank_lines: int
    elapsed_s: float
    rate: float
    latency_ms: dict[str, float | None]
    statuses: dict[str, int]
    errors: dict[str, int]
    stopped: str | None = None
    #: The exit code of `stopped`: 3 (the run could not go on) or 70 (a streak of
    #: internal errors: a bug); see core/stops.py.
    stop_code: int = 3
    retries: dict[str, int] = field(default_factory=dict)
    retry_budget_refused: int = 0
    slowed: str | None = None
    interrupted: int | None = None
    resumed: int = 0
    dynamic_tokens: bool = False
    tokens_fetched: int = 0
    token_renewals: int = 0
    token_renewals_after_401: int = 0
    token_failures: int = 0
    token_waits: int = 0
    token_renewal_ms_mean: float | None = None
    token_renewal_ms_max: float | None = None
    #: min/mean/percentiles of both views, bytes, statuses, top errors (core/figures.py).
    figures: dict[str, Any] = field(default_factory=dict)
    #: Verdicts of --threshold (core/thresholds.py): [{"threshold", "value", "pass"}].
    thresholds: tuple[dict[str, Any], ...] = ()
    #: Calls never sent (load/replay: every --max-in-flight slot busy, --catch-up skip).
    dropped: int = 0

    @property
    def exit_code(self) -> int:
        """Precedence: interrupted (130/143), stopped (3, 70), a threshold failed (4),
        some events failed or were invalid (1), else 0."""
        if self.interrupted is not None:
            return 128 + self.interrupted
        if self.stopped is not None:
            return self.stop_code
        if any(not t["pass"] for t in self.thresholds):
            return THRESHOLD_FAILED
        return 0 if self.failed == 0 and self.dropped == 0 and self.invalid == 0 else 1

    def line(self, *, sent: bool = False) -> str:
        """The one-line summary for stderr (`sent`: load's and replay's, whose rate is the
        calls sent per second over their send span, not the events over the run)."""
        lat = self.latency_ms
        speed = f"sent at {self.rate:.1f}/s" if sent else f"{self.rate:.1f}/s"
        parts = [
            f"{plural(self.events, 'event')} in {self.elapsed_s:.2f}s ({speed}):",
            f"{self.ok} ok, {self.failed} failed,"
            + (f" {self.dropped} dropped," if self.dropped else "")
            + f" {self.invalid} invalid",
        ]
        if lat.get("p50") is not None:
            parts.append(f"; latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
        if self.resumed:
            parts.append(f"; {self.resumed} already answered in the output (resumed)")
        if self.blank_lines:
            parts.append(f"; {plural(self.blank_lines, 'blank line')} skipped")
        # Dropped calls are not errors (counted apart above), nor --dry-run's (not sent).
        errors = {k: v for k, v in self.errors.items() if k not in _NOT_ERRORS}
        if self.errors.get(ErrorKind.DRY_RUN):
            parts.append(f"; {plural(self.errors[ErrorKind.DRY_RUN], 'call')} shown, not sent")
        if errors:
            top = ", ".join(
                f"{k} x{v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:3]
            )
            parts.append(f"; errors: {top}")
        if self.retries:
            total = sum(self.retries.values())
            top = ", ".join(
                f"{k} x{v}" for k, v in sorted(self.retries.items(), key=lambda kv: -kv[1])[:3]
            )
            parts.append(f"; {plural(total, 'retry', 'retries')} ({top})")
        if self.retry_budget_refused:
            parts.append(f"; {self.retry_budget_refused} not retried (retry budget spent)")
        if self.slowed:
            parts.append(f"; {self.slowed}")
        if self.dynamic_tokens:
            parts.append(f"; {self.token_line()}")
        return " ".join(parts).replace(" ;", ";")

    def token_line(self) -> str:
        """Token events, e.g. `tokens: 5 fetched (4 renewals, 1 after 401), 1 failed, ...`."""
        text = f"tokens: {self.tokens_fetched} fetched ({plural(self.token_renewals, 'renewal')}"
        if self.token_renewals_after_401:
            text += f", {self.token_renewals_after_401} after 401"
        text += f"), {self.token_failures} failed"
        if self.token_renewal_ms_mean is not None and self.token_renewal_ms_max is not None:
            text += (
                f", renewal mean {self.token_renewal_ms_mean:.1f} ms"
                f" max {self.token_renewal_ms_max:.1f} ms"
            )
        return text + f", {plural(self.token_waits, 'call')} waited"


PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 event`, `2 events`, `0 retries` (`many`: an irregular plural)."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def summarize(
    stats: RunStats,
    *,
    elapsed_s: float,
    stopped: str | None = None,
    stop_code: int = 3,
    retry_budget_refused: int = 0,
    slowed: str | None = None,
    interrupted: int | None = None,
    resumed: int = 0,
    tokens: TokenStats | None = None,
    schedule: Histogram | None = None,
) -> Summary:
    """The Summary of `stats`; `schedule`: the latency from the schedule (load, replay)."""
    lat = stats.latency
    latency: dict[str, float | None] = {"min": round(lat.min, 3) if lat.count else None}
    for p in PERCENTILES:
        latency["p" + f"{p:g}"] = None if (v := lat.percentile(p)) is None else round(v, 3)
    latency["max"] = round(lat.max, 3) if lat.count else None
    latency["mean"] = round(lat.total / lat.count, 3) if lat.count else None
    dropped = stats.errors.get(ErrorKind.DROPPED, 0)
    return Summary(
        events=stats.events,
        ok=stats.ok,
        failed=stats.failed - dropped,
        dropped=dropped,
        invalid=stats.invalid,
        blank_lines=stats.blank_lines,
        elapsed_s=round(elapsed_s, 6),
        rate=(stats.events - stats.invalid) / elapsed_s if elapsed_s > 0 else 0.0,
        latency_ms=latency,
        statuses={str(k): v for k, v in sorted(stats.statuses.items())},
        errors=dict(stats.errors),
        stopped=stopped,
        stop_code=stop_code,
        retries=dict(stats.retries),
        retry_budget_refused=retry_budget_refused,
        slowed=slowed,
        interrupted=interrupted,
        resumed=resumed,
        figures=figures(
            send=lat,
            schedule=schedule,
            calls=stats.events - stats.invalid,
            ok=stats.ok,
            dropped=dropped,
            statuses=stats.statuses,
            messages=stats.messages,
            bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out,
        ),
        **_token_fields(tokens),
    )


def _token_fields(tokens: TokenStats | None) -> dict[str, Any]:
    if tokens is None:
        return {}
    return {
        "dynamic_tokens": True,
        "tokens_fetched": tokens.fetched,
        "token_renewals": tokens.renewals,
        "token_renewals_after_401": tokens.after_401,
        "token_failures": tokens.failures,
        "token_waits": tokens.waits,
        "token_renewal_ms_mean": (
            round(tokens.renewal_ms_total / tokens.renewals, 3) if tokens.renewals else None
        ),
        "token_renewal_ms_max": round(tokens.renewal_ms_max, 3) if tokens.renewals else None,
    }
