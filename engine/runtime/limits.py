"""Rate limits: `--rate` as one shared limiter with no burst beyond ~5 ms of traffic.

Pacing (engine/core/pacing.py) schedules calls, this module enforces the quota, the pool size
bounds calls in flight: three separate things.
"""

from __future__ import annotations

import math
from typing import Protocol

import anyio
from aiolimiter import AsyncLimiter

_BURST_SECONDS = 0.005


class Limiter(Protocol):
    """Admits one call per `acquire()` (aiolimiter's AsyncLimiter, the Ray rate lease)."""

    async def acquire(self) -> None: ...


class ChunkedLimiter:
    """`rate` calls/s, taken from aiolimiter in chunks of ~5 ms of traffic (at least one).

    aiolimiter costs tens of microseconds per acquire (and spins on uvloop below 1 ms
    ticks); here it is asked once per chunk, and the calls of a chunk go without waiting.
    One chunk is the bucket, so there is no burst at start beyond 5 ms of traffic.
    """

    __slots__ = ("_chunk", "_left", "_limiter", "_lock")

    def __init__(self, rate: float) -> None:
        self._chunk = max(1, math.floor(rate * _BURST_SECONDS))
        self._limiter = AsyncLimiter(self._chunk, self._chunk / rate)
        self._left = 0
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        if self._left > 0:
            self._left -= 1
            return
        async with self._lock:  # one caller refills; the others then take from its chunk
            if self._left > 0:
                self._left -= 1
                return
            await self._limiter.acquire(self._chunk)
            self._left = self._chunk - 1


def make_limiter(rate: float | None) -> ChunkedLimiter | None:
    """A limiter for `rate` calls/s whose bucket holds ~5 ms of traffic (at least one call)."""
    if rate is None:
        return None
    return ChunkedLimiter(rate)
