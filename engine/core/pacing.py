"""Pure pacers: when each call is due (no clock, no I/O; tested by tables).

Rules:
- A pacer is a function of elapsed time and hits (vegeta's `Pace(elapsed, hits) ->
  (wait, stop)`): `pace` says how long to wait before hit number `hits` (0-based) and
  whether the schedule is over. `due(hits)` is the same schedule as an offset from the
  start: the scheduler stamps that *intended* time on the record (`scheduled_at`), so a
  late send is visible instead of silently shifting the schedule (wrk2's correction).
- Every open-model schedule is piecewise linear in rate: constant is one segment, a
  ramp is one segment from R0 to R1, k6-style stages are a chain of segments, each
  ramping linearly from the previous target to its own. A zero-length stage is an
  instant jump, so steps are written "0s:100,30s:100,0s:500,1m:500".
- Hit n is due when the cumulative number of hits, the integral of the rate, reaches n;
  within a segment that is the root of a quadratic, solved in its cancellation-free
  form. The end of the schedule is exclusive: 200/s for 3 s is exactly 600 hits.
- Replay is separate (`ReplaySchedule`): recorded timestamps scaled by a speed, idle gaps
  clamped, a minimum spacing for a rate cap (it delays, never drops).
- `CatchUp` lets a stalled client make up its late calls at most 25% above the
  scheduled rate (any 100 ms window), or skip them (`--catch-up skip`).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from engine.core import units
from engine.core.errors import ConfigError

_EPS = 1e-9


class Pacer(Protocol):
    """An open-model schedule."""

    def due(self, hits: int) -> float | None:
        """Seconds from the start at which hit number `hits` is due; None past the end."""
        ...

    def pace(self, elapsed: float, hits: int) -> tuple[float, bool]:
        """(seconds to wait before hit number `hits`, whether the schedule is over)."""
        ...


@dataclass(frozen=True, slots=True)
class Segment:
    """`duration` seconds during which the rate goes linearly from `start` to `end` (per s)."""

    duration: float
    start: float
    end: float

    @property
    def hits(self) -> float:
        if self.duration == 0:
            return 0.0
        return (self.start + self.end) / 2 * self.duration

    def time_of(self, k: float) -> float:
        """Offset into the segment at which its cumulative hit count reaches k (< hits)."""
        b = self.start
        a = 0.0 if math.isinf(self.duration) else (self.end - self.start) / (2 * self.duration)
        root = math.sqrt(max(0.0, b * b + 4 * a * k))
        denominator = b + root
        return 0.0 if denominator == 0 else 2 * k / denominator


@dataclass(frozen=True, slots=True)
class RatePacer:
    """A piecewise-linear rate schedule (constant, ramp and stages are all this)."""

    segments: tuple[Segment, ...]
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _hit_ends: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts: list[float] = []
        ends: list[float] = []
        t = 0.0
        total = 0.0
        for seg in self.segments:
            if seg.duration < 0 or seg.start < 0 or seg.end < 0:
                raise ConfigError("a schedule's durations and rates must not be negative")
            if math.isinf(seg.duration) and seg.start != seg.end:
                raise ConfigError("a ramp needs a finite --duration")
            starts.append(t)
            t += seg.duration
            total += seg.hits
            ends.append(total)
        object.__setattr__(self, "_starts", tuple(starts))
        object.__setattr__(self, "_hit_ends", tuple(ends))

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    @property
    def peak(self) -> float:
        """The highest rate of the schedule (calls per second)."""
        return max((max(s.start, s.end) for s in self.segments if s.duration > 0), default=0.0)

    @property
    def total_hits(self) -> int | None:
        """How many hits the schedule holds (None when it never ends)."""
        if not self._hit_ends or math.isinf(self._hit_ends[-1]):
            return None if self._hit_ends else 0
        return max(0, math.ceil(self._hit_ends[-1] - _EPS))

    def due(self, hits: int) -> float | None:
        n = float(hits)
        if not self._hit_ends or n >= self._hit_ends[-1] - _EPS:
            return None
        i = bisect_right(self._hit_ends, n)
        before = self._hit_ends[i - 1] if i else 0.0
        seg = self.segments[i]
        offset = seg.time_of(n - before)
        return self._starts[i] + min(offset, seg.duration)

    def pace(self, elapsed: float, hits: int) -> tuple[float, bool]:
        due = self.due(hits)
        if due is None:
            return 0.0, True
        return max(0.0, due - elapsed), False


def constant(rate: float, duration: float = math.inf) -> RatePacer:
    """`rate` calls per second for `duration` seconds (forever by default)."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ConfigError(f"--rate must be a positive number of calls per second, got {rate}")
    return RatePacer((Segment(duration, rate, rate),))


def ramp(start: float, end: float, duration: float) -> RatePacer:
    """The rate goes linearly from `start` to `end` calls per second over `duration` s."""
    if not math.isfinite(duration) or duration <= 0:
        raise ConfigError("a ramp needs a positive, finite --duration")
    if max(start, end) <= 0:
        raise ConfigError("--ramp-from and --ramp-to cannot both be 0")
    return RatePacer((Segment(duration, start, end),))


def stages(steps: Sequence[tuple[float, float]], *, start: float = 0.0) -> RatePacer:
    """k6 stages: each (duration, target) ramps linearly from the previous target."""
    segments = []
    rate = start
    for duration, target in steps:
        segments.append(Segment(duration, rate, target))
        rate = target
    pacer = RatePacer(tuple(segments))
    if not steps or pacer.total_hits == 0:
        raise ConfigError("--stages schedules no call at all")
    return pacer


# -- parsing ------------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """`90`, `1.5s`, `500ms`, `2m`, `1h30m`, `1m30s` -> seconds (engine/core/units.py)."""
    try:
        return units.parse_duration(text)
    except units.UnitError as exc:
        raise ConfigError(f"duration: {exc}") from None


def parse_stages(text: str) -> list[tuple[float, float]]:
    """`"30s:100,1m:500,30s:0"` -> [(30.0, 100.0), (60.0, 500.0), (30.0, 0.0)]."""
    steps = []
    for part in text.split(","):
        duration, sep, target = part.strip().partition(":")
        if not sep:
            raise ConfigError(f"--stages: {part.strip()!r} is not DURATION:RATE (like 30s:100)")
        if target.strip().startswith("-"):
            raise ConfigError(f"--stages: rate {target!r} must be 0 or more")
        try:
            rate = units.parse_rate(target)
        except units.UnitError:
            raise ConfigError(
                f"--stages: rate {target!r} is not a number of calls per second "
                f"such as {units.RATE_EXAMPLES}"
            ) from None
        steps.append((parse_duration(duration), rate))
    return steps


# -- replay -------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplaySchedule:
    """Recorded timestamps (fed in order) -> offsets from the start of the replay.

    The first event is due at 0. Each recorded gap is divided by `speed`; a gap longer
    than `max_gap` wall seconds is clamped to it; an event recorded before its
    predecessor (a log slightly out of order, past the reorder window) goes at once.
    With `rate`, two calls are at least 1/rate apart: that delays, never drops, and a
    delay does not shift the later events that were due after it anyway.
    """

    speed: float = 1.0
    max_gap: float | None = None
    rate: float | None = None
    _last_ts: float | None = None
    _recorded: float = 0.0
    _last_due: float | None = None

    def due(self, timestamp: float) -> float:
        if self._last_ts is not None:
            gap = max(0.0, timestamp - self._last_ts) / self.speed
            if self.max_gap is not None:
                gap = min(gap, self.max_gap)
            self._recorded += gap
        if self._last_ts is None or timestamp > self._last_ts:
            self._last_ts = timestamp
        due = self._recorded
        if self.rate is not None and self._last_due is not None:
            due = max(due, self._last_due + 1.0 / self.rate)
        self._last_due = due
        return due


@dataclass(slots=True)
class CatchUp:
    """When a late call may go out: never faster than `factor` x its scheduled rate.

    A stalled client (GC, SIGSTOP, a slow disk) has calls to make up. Sending them all
    at once would be a burst the schedule never asked for (a 1-second sliding cap let
    520 calls out in one 100 ms window at 500/s); holding them to the scheduled rate
    would never catch up. Here each call keeps at least its scheduled gap to the
    previous one, divided by `factor`: a call on time goes at its due time, late calls
    leave `factor` x faster than scheduled until the schedule is caught up, so a 100 ms
    window carries at most `factor` x its scheduled share, plus `slack` x that rate
    (plus one call at the window's edge).

    The gap is counted from the previous call's *slot* (when it was allowed to go), not
    from when it really went: a timer wakes a little late every time (~0.1-1 ms), and
    counting from the real send would add that to every gap (at 500/s, 1.6 ms + 0.5 ms
    per call is 476/s: the backlog never drained). Only a previous send more than
    `slack` seconds after its slot (the client stalled while it waited) moves the count
    to the real send, so a stall is never made up as a burst. It is a function of (due,
    previous due, previous slot, previous send): no clock, tested by tables. The
    lateness stays in the record (`sent_at - scheduled_at`).

    `skip` (k6's behaviour): a call more than `skip_after` seconds behind its due time
    when its turn comes is not sent but counted as dropped (`missed`).
    """

    #: The promise is 1.25x over any 100 ms window; catching up at 1.15x leaves the
    #: `slack` and the window's edge room within it (at 500/s: 57.5 + 2.5 + 1 <= 62.5).
    factor: float = 1.15
    skip: bool = False
    skip_after: float = 0.1
    slack: float = 0.005
    _last_due: float | None = None
    _slot: float = -math.inf
    _last_sent: float = -math.inf

    def earliest(self, due: float) -> float:
        """The earliest offset at which the call due at `due` may go out (dues in order)."""
        gap = 0.0 if self._last_due is None else max(0.0, due - self._last_due) / self.factor
        self._last_due = due
        base = max(self._slot, self._last_sent - self.slack)
        self._slot = max(due, base + gap)
        return self._slot

    def missed(self, due: float, elapsed: float) -> bool:
        """With `skip`: whether the call due at `due` is too late to send at `elapsed`."""
        return self.skip and elapsed - due > self.skip_after

    def sent(self, at: float) -> None:
        """A call went out at offset `at`."""
        self._last_sent = at


T = TypeVar("T")


@dataclass(slots=True)
class ReorderWindow(Generic[T]):
    """Holds up to `size` items and releases the one with the earliest timestamp.

    A log written by several threads is slightly out of order; a window of a few hundred
    lines puts it back in order with bounded memory. An item older than one already
    released is still released (counted in `late`): the schedule sends it at once.
    """

    size: int
    late: int = 0
    _heap: list[tuple[float, int, T]] = field(default_factory=list)
    _count: int = 0
    _released: float = -math.inf

    def push(self, timestamp: float, item: T) -> list[tuple[float, T]]:
        """Add one item; returns what leaves the window (zero or one item)."""
        heapq.heappush(self._heap, (timestamp, self._count, item))
        self._count += 1
        if len(self._heap) > self.size:
            return [self._pop()]
        return []

    def drain(self) -> list[tuple[float, T]]:
        """Everything still held, in timestamp order (at the end of the input)."""
        return [self._pop() for _ in range(len(self._heap))]

    def _pop(self) -> tuple[float, T]:
        timestamp, _, item = heapq.heappop(self._heap)
        if timestamp < self._released:
            self.late += 1
        else:
            self._released = timestamp
        return timestamp, item
