"""The dashboard's per-second points, from successive snapshots of a run (pure).

Rules:
- One point per `push`, from the difference between this snapshot and the previous one:
  calls finished per second, latency percentiles of the calls that finished in between
  (from the send and, for load and replay, from the schedule), errors by kind.
- Memory is bounded: the last `max_points` points are kept (15 minutes at one a second);
  each point has an index, so a page asks only for what it has not seen (`since`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from engine.core.stats import Histogram
from engine.core.tally import Snapshot, Tally

MAX_POINTS = 900
PERCENTILES = (50.0, 90.0, 99.0)


def _percentiles(hist: Histogram) -> list[float | None]:
    return [None if (v := hist.percentile(p)) is None else round(v, 3) for p in PERCENTILES]


class Timeline:
    """The points of one run, oldest first."""

    __slots__ = ("_last", "_last_t", "_points", "pushed")

    def __init__(self, *, max_points: int = MAX_POINTS) -> None:
        self._points: deque[dict[str, Any]] = deque(maxlen=max(2, max_points))
        self._last = Tally()
        self._last_t = 0.0
        self.pushed = 0  # the index the next point gets

    def push(self, snap: Snapshot) -> dict[str, Any]:
        """Add the point ending at `snap`; returns it."""
        delta = snap.tally.minus(self._last)
        width = snap.elapsed - self._last_t
        rate = delta.done / width if width > 0 else 0.0
        scheduled = delta.scheduled / width if width > 0 and snap.mode != "run" else None
        point = {
            "i": self.pushed,
            "t": round(snap.elapsed, 3),
            "rate": round(rate, 3),
            "target": snap.target_rate,
            "scheduled": None if scheduled is None else round(scheduled, 3),
            "in_flight": snap.in_flight,
            "send": _percentiles(delta.latency),
            "schedule": _percentiles(delta.corrected) if snap.mode != "run" else None,
            "errors": dict(delta.errors()),
        }
        self._points.append(point)
        self._last = snap.tally.copy()
        self._last_t = snap.elapsed
        self.pushed += 1
        return point

    def since(self, index: int) -> list[dict[str, Any]]:
        """The points from `index` on (all that are still kept when it is older)."""
        return [p for p in self._points if p["i"] >= index]
