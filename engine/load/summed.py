"""What the parent of `load --workers N` or `replay --workers N` shows and serves.

The workers send their figures (engine/multiproc LiveFigures: calls, latency, latency
from the schedule, schedule lag, calls due); the parent sums them. Here that sum becomes
load's live display (progress.py's rows) and the --metrics-addr / --dashboard figures
of a load or a replay, as a single process gives them.

Rules:
- Read only: a `Summed` gives the summed Tally, the calls in flight, the run's token
  provider and the workers' jobs; the schedule's clock starts at the shares' wall-clock
  origin (shares.py), known once the shares are made (before that: 0 s).
- The last second's latency is how much the latency-from-schedule histogram grew over
  about the last second (the workers report twice a second): the per-second series stay
  in the workers.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from engine.core.pacing import Pacer
from engine.core.records import ErrorKind
from engine.core.series import Figures
from engine.core.stats import Histogram
from engine.core.tally import Progress, Snapshot, Tally
from engine.load.plan import LiveState, LoadPlan
from engine.load.progress import load_rows, target_rate
from engine.load.shares import LoadShare
from engine.net.auth import TokenProvider
from engine.runtime.display import RateMeter, Row
from engine.runtime.progress import token_state
from engine.runtime.watch import token_view


class Summed(Protocol):
    """The workers' figures as the --workers parent sums them."""

    def tally(self) -> Tally: ...  # a copy of the sum so far

    def in_flight(self) -> int: ...

    @property
    def tokens(self) -> TokenProvider: ...

    def jobs(self) -> Sequence[object]: ...  # the workers' jobs, once made


def schedule_length(pacer: Pacer | None) -> tuple[int | None, float | None]:
    """(calls, seconds) of a load schedule, each None when it does not say."""
    total = getattr(pacer, "total_hits", None)
    duration = getattr(pacer, "duration", None)
    return (
        total if isinstance(total, int) else None,
        duration if isinstance(duration, float) and math.isfinite(duration) else None,
    )


def figures_of(tally: Tally) -> Figures:
    """The counters of `tally` as the display reads them from a run's Figures."""
    errors = tally.errors()
    invalid = errors.pop(ErrorKind.INVALID, 0)
    figures = Figures()
    figures.events = tally.done
    figures.invalid = invalid
    figures.failed = sum(errors.values())
    figures.dropped = tally.dropped
    figures.ok = figures.events - figures.invalid - figures.failed
    figures.errors = errors
    return figures


class SummedLoad:
    """`view` (display.show_live's) and `probe` (runtime/watch.py's) of the summed run."""

    def __init__(self, summed: Summed, plan: LoadPlan) -> None:
        self.summed = summed
        self.plan = plan
        self.total, self.duration = schedule_length(plan.pacer)
        self.meter = RateMeter()
        self._corrected: deque[tuple[float, Histogram]] = deque()

    def elapsed(self) -> float:
        """Seconds into the schedule (0 before it starts)."""
        share = next((j for j in self.summed.jobs() if isinstance(j, LoadShare)), None)
        return 0.0 if share is None else max(0.0, time.time() - share.origin)

    def _target(self, elapsed: float) -> float | None:
        return target_rate(self.plan.pacer, elapsed) if self.plan.mode == "load" else None

    def _last_second(self, now: float, corrected: Histogram) -> Histogram | None:
        samples = self._corrected
        samples.append((now, corrected))
        while len(samples) > 2 and now - samples[1][0] >= 1.0:
            samples.popleft()
        grown = corrected.minus(samples[0][1]) if len(samples) > 1 else corrected
        return grown if grown.count else None

    def view(self, _shown: float) -> Sequence[Row]:
        tally = self.summed.tally()
        now = time.monotonic()
        elapsed = self.elapsed()
        live = LiveState(
            figures_of(tally),
            scheduled=tally.scheduled,
            in_flight=self.summed.in_flight(),
            total=self.total,
            duration=self.duration,
        )
        return load_rows(
            live,
            elapsed=elapsed,
            rate=self.meter.rate(now, tally.scheduled - tally.dropped),
            target=target_rate(self.plan.pacer, elapsed),
            token=token_state(self.summed.tokens),
            last_second=self._last_second(now, tally.corrected),
        )

    def probe(self, elapsed: float) -> Snapshot:
        tally = self.summed.tally()
        tokens = self.summed.tokens
        stats = tokens.token_stats()
        tally.token_renewals = 0 if stats is None else stats.renewals
        into = self.elapsed()
        progress = None
        if self.plan.mode == "load" and self.duration is not None:
            progress = Progress(min(into, self.duration), self.duration, "seconds")
        elif self.plan.mode == "load" and self.total:
            progress = Progress(float(tally.scheduled), float(self.total), "events")
        return Snapshot(
            self.plan.mode,
            elapsed,
            tally,
            in_flight=self.summed.in_flight(),
            target_rate=self._target(into),
            token=token_view(tokens),
            progress=progress,
        )
