"""Rate limits: `--rate` as one shared limiter on a schedule, exact over time.

Pacing (engine/core/pacing.py) schedules calls, this module enforces the quota, the pool size
bounds calls in flight: three separate things.

Why not aiolimiter: its leaky bucket cannot go below empty, so the time between the
bucket draining and the next waiter waking (loop latency, a late timer) is lost on
every refill. Asked once per ~5 ms chunk, that held `run --rate` 4-17% under its target
(50 -> 47.8/s, 500 -> 416/s). A schedule-based permit (core.rates.LeaseSchedule with
slack) makes that lateness up, as load's pacer does.

The N limiters of a `--workers N` run (R/N each) share an origin, the parent's clock when
it started them, and worker i's schedule sits `i / N` of a step after it: their chunks
interleave, so the run's bursts stay ~5 ms of its traffic (R's), as one process's do.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio

from engine.core.rates import LeaseSchedule

_BURST_SECONDS = 0.005
#: Lateness made up rather than lost (a late wake-up, a busy loop): a caller this late
#: keeps its slot; after a longer idle moment the schedule restarts (nothing saved up).
_SLACK_SECONDS = 0.02


class Limiter(Protocol):
    """Admits one call per `acquire()` (the chunked schedule below, the Ray rate lease)."""

    async def acquire(self) -> None: ...


class ChunkedLimiter:
    """`rate` calls/s, granted on a schedule in chunks of ~5 ms of traffic (at least one).

    One timer per chunk rather than per call (a sleep costs tens of microseconds); the
    calls of a chunk go without waiting. There is no burst at start or after an idle
    moment beyond one chunk; a late refill catches up at most `_SLACK_SECONDS` of traffic.
    """

    __slots__ = ("_chunk", "_left", "_lock", "_schedule")

    def __init__(self, rate: float, *, origin: float | None = None, phase: float = 0.0) -> None:
        self._chunk = max(1, math.floor(rate * _BURST_SECONDS))
        if origin is not None:  # time.monotonic() (any process's) -> this loop's clock
            origin += anyio.current_time() - time.monotonic() + phase * self._chunk / rate
        self._schedule = LeaseSchedule(rate, slack=_SLACK_SECONDS, origin=origin)
        self._left = 0
        self._lock = anyio.Lock()

    def take(self) -> bool:
        """A permit of the current chunk, without waiting; False when none is left."""
        if self._left > 0:
            self._left -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self._left > 0:
            self._left -= 1
            return
        async with self._lock:  # one caller refills; the others then take from its chunk
            if self._left > 0:
                self._left -= 1
                return
            at = self._schedule.grant(anyio.current_time(), self._chunk)
            if at > anyio.current_time():
                await anyio.sleep_until(at)
            self._left = self._chunk - 1


def in_hand(limiter: Limiter) -> bool:
    """A permit taken at once (the current chunk's), so the caller needs no cancel scope
    around a wait; False when it must `await limiter.acquire()`."""
    return type(limiter) is ChunkedLimiter and limiter.take()


def make_limiter(
    rate: float | None, *, origin: float | None = None, phase: float = 0.0
) -> ChunkedLimiter | None:
    """A limiter for `rate` calls/s whose bursts hold ~5 ms of traffic (at least one call).

    `origin` (a `time.monotonic()`, shared by the limiters of one run; in a running loop):
    the chunks are granted on its grid, at `phase` (0 <= phase < 1) of a step after it."""
    if rate is None:
        return None
    return ChunkedLimiter(rate, origin=origin, phase=phase)
