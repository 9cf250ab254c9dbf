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
- The adaptive slow-down on 429/503 storms is engine/core/rates.py's `AdaptiveRate`;
  THROTTLE_STATUSES says which answers feed it.
Nothing here reads a clock or sleeps: callers pass `now`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from engine.core.records import ErrorKind, http_kind

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_ERROR_KINDS = frozenset(
    {
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECT,
        ErrorKind.DISCONNECTED,
        ErrorKind.PAYLOAD,
        ErrorKind.NETWORK,
    }
)
THROTTLE_STATUSES = frozenset({429, 503})


def retry_reason(status: int | None, error_kind: str | None) -> str | None:
    """The reason to retry a call that ended so (its error kind), or None when final."""
    if error_kind is not None:
        # An answer with an error of its own (too_large keeps its status) is final
        # whatever its status: the same answer would come back.
        return error_kind if error_kind in RETRY_ERROR_KINDS else None
    if status in RETRY_STATUSES:
        return http_kind(status)
    return None


#: What a Retry-After too far out to mean anything reads as (about 31,700 years): past
#: any --retry-after-cap, so the call is final, and still a float that prints.
FAR_FUTURE = 1e12
# An HTTP date is 29 characters, a sane delay a few digits; anything longer is not read
# as a number or a date (int() of thousands of digits raises, floats overflow).
_MAX_TEXT = 64


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 10.2.3), None when absent or bad.

    `now` is the wall-clock time (epoch seconds) an HTTP date is measured against; a
    date in the past means 0. Any header value is data: a delay of any number of digits
    reads as at most FAR_FUTURE; what is neither a delay nor a date is None (the usual
    backoff); nothing raises.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or not text.isascii():
        return None
    if text.isdigit():
        digits = text.lstrip("0") or "0"
        return float(int(digits)) if len(digits) <= 12 else FAR_FUTURE
    if len(text) > _MAX_TEXT:
        return None
    if "_" not in text:  # float() reads "1_0" as 10
        try:
            seconds = float(text)  # not in the RFC, but sent by some servers ("1.5")
        except ValueError:
            pass
        else:
            if not math.isfinite(seconds) or seconds < 0:
                return None
            return min(seconds + 0.0, FAR_FUTURE)  # + 0.0: "-0" is 0
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), FAR_FUTURE)


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
