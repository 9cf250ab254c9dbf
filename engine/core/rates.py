"""Rate arithmetic (pure): the adaptive slow-down and the lease schedule of a Ray run.

Rules:
- Adaptive rate (AIMD, as botocore's adaptive mode): a 429/503 storm cuts the allowed
  sending rate of the whole run to `beta` x the rate measured over the last second
  (at most once per `cooldown`); without a new signal the limit doubles every
  `recovery` seconds and lifts once it passes the rate the episode started from.
- Lease schedule: permits of a global rate are granted on a virtual schedule, in
  leases of n, never saved up; optionally on a grid, phased against other schedules.
Nothing here reads a clock or sleeps: callers pass `now` (monotonic seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


@dataclass(slots=True)
class LeaseSchedule:
    """When a lease of n permits may be spent, for a global rate.

    Subtleness: permits are granted on a virtual schedule, never saved up, so an idle
    moment does not turn into a burst later. Over any interval of T seconds the leases
    granted hold at most rate * (T + slack) + one lease of permits.

    With `slack`, a caller that comes back up to `slack` seconds after its slot keeps
    that slot (the permits are spent at once and the next slot follows from it): timer
    and event-loop lateness is made up instead of lost, which is what held `run --rate`
    10-17% under its target when every late wake-up restarted the schedule from `now`.
    An idle moment longer than `slack` restarts the schedule from `now`: nothing is
    saved up from it.

    With an `origin`, the schedule is held to the grid `origin + k * n / rate`: it starts
    (and restarts after an idle moment) at the first slot of the grid not more than
    `slack` ago, never at `now`. Several schedules whose origins are spread over one
    step (`--workers`: worker i of N at `i / N` of a step) so keep their leases apart
    for the whole run; restarting at `now`, the workers that start (or wait for input)
    together stayed in step, their leases one burst (4 calls within 11 ms at
    `--rate 2 --workers 4`, then nothing for 2 s).
    """

    rate: float
    slack: float = 0.0
    next_at: float = -math.inf
    origin: float | None = None

    def grant(self, now: float, n: int) -> float:
        """The time at which `n` permits asked for at `now` may be spent (>= now)."""
        if self.next_at >= now - self.slack:
            at = self.next_at
        elif self.origin is None:
            at = now
        else:
            step = n / self.rate
            at = self.origin + max(0, math.ceil((now - self.slack - self.origin) / step)) * step
        self.next_at = at + n / self.rate
        return max(at, now)
