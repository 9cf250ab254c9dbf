"""Retry policy (pure): what to retry, how long to wait, and when to stop retrying.

Rules:
- Retried: connection errors, timeouts, dropped connections, truncated bodies, and
  HTTP 429, 500, 502, 503, 504 (as botocore). Every other status is final (a 400
  stays a 400, a 501 stays a 501).
- The wait before retry n (n = 1, 2, ...) is "full jitter": uniform in
  [0, min(cap, base * 2**(n-1))], drawn from an injected random source. A
  `Retry-After` (seconds or an HTTP date) is a floor on that wait, itself capped so a
  server cannot park a worker for an hour.
- A retry budget (a token bucket, as gRPC retry throttling and Finagle's RetryBudget):
  each first attempt deposits `ratio` tokens, each retry spends one, the bucket holds at
  most `reserve`. A sick server thus gets at most `reserve` retries in a burst and then
  `ratio` retries per new call; past that, failures are final at once.
- Adaptive rate (AIMD, as botocore's adaptive mode): a 429/503 storm cuts the allowed
  sending rate of the whole run to `beta` x the rate measured over the last second
  (at most once per `cooldown`); without a new signal the limit doubles every
  `recovery` seconds and lifts once it passes the rate the episode started from.
Nothing here reads a clock or sleeps: callers pass `now`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_ERROR_KINDS = frozenset({"timeout", "connect", "disconnected", "payload", "network"})
THROTTLE_STATUSES = frozenset({429, 503})


def retry_reason(status: int | None, error_kind: str | None) -> str | None:
    """The reason to retry a call that ended so (its error kind), or None when final."""
    if error_kind in RETRY_ERROR_KINDS:
        return error_kind
    if status in RETRY_STATUSES:
        return f"http_{status}"
    return None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 10.2.3), None when absent or bad.

    `now` is the wall-clock time (epoch seconds) an HTTP date is measured against; a
    date in the past means 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        seconds = float(text)  # not in the RFC, but sent by some servers ("1.5")
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def full_jitter(retry: int, *, base: float, cap: float, rand: float) -> float:
    """Wait before retry number `retry` (1-based), `rand` uniform in [0, 1)."""
    exponent = min(retry - 1, 62)  # 2**62 * base is past any cap; keeps floats finite
    return rand * min(cap, base * math.pow(2.0, exponent))


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySettings:
    """The retry options of a run (see the module rules)."""

    retries: int = 3
    backoff_base: float = 0.1
    backoff_cap: float = 10.0
    retry_after_cap: float = 30.0
    budget_ratio: float = 0.2
    budget_reserve: float = 100.0


class RetryBudget:
    """Token bucket bounding retries to `ratio` per first attempt beyond a `reserve`."""

    __slots__ = ("_ratio", "_reserve", "refused", "spent", "tokens")

    def __init__(self, *, ratio: float, reserve: float) -> None:
        self._ratio = ratio
        self._reserve = reserve
        self.tokens = reserve
        self.spent = 0
        self.refused = 0

    def on_first_attempt(self) -> None:
        self.tokens = min(self._reserve, self.tokens + self._ratio)

    def try_spend(self) -> bool:
        if self.tokens >= 1.0 - 1e-9:  # 5 x 0.2 adds up to 0.99999...
            self.tokens -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False


@dataclass(frozen=True, slots=True)
class Decision:
    """Retry after `wait` seconds, or stop with `final` (why no retry) set."""

    wait: float
    final: str | None = None


class RetryPolicy:
    """Decides, for a failed attempt, whether and when to try again."""

    __slots__ = ("_rand", "budget", "settings")

    def __init__(self, settings: RetrySettings, *, rand: Callable[[], float]) -> None:
        self.settings = settings
        self.budget = RetryBudget(ratio=settings.budget_ratio, reserve=settings.budget_reserve)
        self._rand = rand

    def decide(self, retries_done: int, retry_after: str | None, *, now: float) -> Decision:
        """After a retryable failure, with `retries_done` retries already made."""
        s = self.settings
        if retries_done >= s.retries:
            return Decision(0.0, f"gave up after {retries_done + 1} attempts")
        server_wait = parse_retry_after(retry_after, now=now)
        if server_wait is not None and server_wait > s.retry_after_cap:
            return Decision(
                0.0,
                f"server asked to retry after {server_wait:g}s, more than "
                f"--retry-after-cap {s.retry_after_cap:g}s",
            )
        if not self.budget.try_spend():
            return Decision(
                0.0,
                "not retried: retry budget exhausted (the server fails too many calls; "
                f"retries are limited to {s.budget_ratio:.0%} of calls)",
            )
        wait = full_jitter(
            retries_done + 1, base=s.backoff_base, cap=s.backoff_cap, rand=self._rand()
        )
        if server_wait is not None:
            wait = max(wait, server_wait)
        return Decision(wait)


class AdaptiveRate:
    """Run-wide sending-rate limit that backs off on 429/503 storms (AIMD).

    A storm is at least `storm_min` throttle answers and `storm_share` of the calls
    over the last second: a stray 503 does not slow a healthy run down.
    """

    __slots__ = (
        "_beta",
        "_bucket",
        "_cooldown",
        "_cut_at",
        "_episode_start",
        "_first_send",
        "_limit",
        "_min_rate",
        "_next_slot",
        "_now_counts",
        "_prev_counts",
        "_recovery",
        "_start_rate",
        "_storm_min",
        "_storm_share",
        "cuts",
        "lowest",
        "throttled_s",
    )

    def __init__(
        self,
        *,
        beta: float = 0.5,
        cooldown: float = 1.0,
        recovery: float = 2.0,
        min_rate: float = 1.0,
        storm_share: float = 0.25,
        storm_min: int = 5,
    ) -> None:
        self._beta = beta
        self._cooldown = cooldown
        self._recovery = recovery
        self._min_rate = min_rate
        self._storm_share = storm_share
        self._storm_min = storm_min
        self._bucket = 0  # the whole second `_now_counts` belongs to
        self._now_counts = [0, 0]  # calls started, throttle answers
        self._prev_counts = [0, 0]
        self._limit: float | None = None  # the rate right after the last cut
        self._cut_at = -math.inf
        self._episode_start = 0.0
        self._first_send: float | None = None
        self._start_rate = 0.0
        self._next_slot = -math.inf
        self.cuts = 0
        self.lowest: float | None = None
        self.throttled_s = 0.0

    def _roll(self, now: float) -> None:
        second = math.floor(now)
        if second != self._bucket:
            recent = second == self._bucket + 1
            self._prev_counts = self._now_counts if recent else [0, 0]
            self._now_counts = [0, 0]
            self._bucket = second

    def _sliding(self, now: float, index: int) -> float:
        self._roll(now)
        frac = now - math.floor(now)
        return self._prev_counts[index] * (1.0 - frac) + self._now_counts[index]

    def measured(self, now: float) -> float:
        """Calls/s started over the last second (sliding estimate; in the run's first
        second, scaled up from the time elapsed so far)."""
        calls = self._sliding(now, 0)
        if self._first_send is not None and now - self._first_send < 1.0:
            return calls / max(now - self._first_send, 0.05)
        return calls

    def on_send(self, now: float) -> None:
        if self._first_send is None:
            self._first_send = now
        self._roll(now)
        self._now_counts[0] += 1

    def on_throttle(self, now: float) -> bool:
        """A 429/503 came back; True when this cut the rate."""
        self._roll(now)
        self._now_counts[1] += 1
        throttles = self._sliding(now, 1)
        if throttles < self._storm_min or throttles < self._storm_share * self._sliding(now, 0):
            return False
        calls = self.measured(now)
        if now - self._cut_at < self._cooldown:
            return False
        current = self.limit(now)
        measured = max(calls, self._min_rate)
        if current is None:
            self._start_rate = measured
            self._episode_start = now
            base = measured
        else:
            base = min(current, measured)
        self._limit = max(self._min_rate, base * self._beta)
        self._cut_at = now
        self.cuts += 1
        self.lowest = self._limit if self.lowest is None else min(self.lowest, self._limit)
        return True

    def limit(self, now: float) -> float | None:
        """The allowed calls/s now, None when unlimited."""
        if self._limit is None:
            return None
        elapsed = max(0.0, now - self._cut_at)
        current = self._limit * math.pow(2.0, elapsed / self._recovery)
        if current > self._start_rate:
            lifted_at = self._cut_at + self._recovery * math.log2(self._start_rate / self._limit)
            self.throttled_s += max(0.0, lifted_at - self._episode_start)
            self._limit = None
            return None
        return current

    def throttled_seconds(self, now: float) -> float:
        """Time spent under a lowered limit, the current episode included."""
        if self.limit(now) is None:
            return self.throttled_s
        return self.throttled_s + (now - self._episode_start)

    def summary(self, now: float) -> str | None:
        """What the run's summary says about it; None when the rate was never lowered."""
        if self.cuts == 0 or self.lowest is None:
            return None
        times = "time" if self.cuts == 1 else "times"
        return (
            f"server pushed back (429/503 storm): sending rate lowered {self.cuts} {times}, "
            f"to {self.lowest:.0f}/s at lowest, for {self.throttled_seconds(now):.1f}s"
        )

    def reserve(self, now: float) -> float:
        """Seconds the caller must wait before its call (0 when not limited)."""
        rate = self.limit(now)
        if rate is None:
            return 0.0
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / rate
        return slot - now
