"""`load --workers N` and `replay --workers N`: one schedule split over N processes.

Rules:
- Worker i of N drives slots i, i+N, i+2N, ... of the one schedule (its events in order,
  each with its due time), all from the same wall-clock start (`origin`), so the union
  of the shares is the plan exactly and the total rate is the target. Invalid lines are
  answered once, by worker 0.
- Each worker reads the input itself (stdin cannot be read N times: refused by the CLI)
  and has ceil(max_in_flight / N) slots of its own.
- Each returns its `ShareResult`; the parent adds them up (`merge_results`): counters,
  both latency histograms (from the schedule and from the send) and the per-second
  series, which all share the origin.
- `--series FILE`: each worker appends its own seconds to the file the parent opened
  with the header (series_file.open_shared); the parent writes the end line.
- The run's token, output and summary are the --workers machinery's (engine/multiproc):
  this module knows only the schedule and the figures.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, fields, replace

from engine.core.events import Event, ReadCounts
from engine.core.pacing import ReorderWindow
from engine.core.records import Result
from engine.core.series import Figures, Series
from engine.core.stats import Histogram
from engine.load.driver import _Driver, _schedule
from engine.load.plan import LiveState, LoadPlan, Scheduled
from engine.load.series_file import SeriesWriter
from engine.runtime.engine import Engine

#: Seconds between the workers' start message and the schedule's first slot: the
#: workers open their pools meanwhile, so the first calls are not late.
START_LEAD_S = 0.3


@dataclass(frozen=True, slots=True)
class ShareResult:
    """What one worker's share found."""

    figures: Figures
    scheduled: int
    late_in_log: int
    elapsed_s: float
    attempts: int = 0  # attempts sent, retries included
    cut_off: int = 0  # calls in flight cut off by the run's stop


@dataclass(frozen=True, slots=True)
class LoadShare:
    """Worker `index` of `count`: its slots of the plan (a `multiproc` WorkerJob)."""

    plan: LoadPlan
    inputs: tuple[str, ...]
    rate: float | None  # replay's cap for the whole run: the schedule is computed whole
    index: int
    count: int
    origin: float  # wall clock (time.time()) of the schedule's start
    #: --series FILE to append this share's seconds to, and how long after a second
    #: ends its lines are written (the longest a call can take).
    series: str | None = None
    horizon: float = 0.0

    async def run(
        self, engine: Engine, emit: Callable[[list[Result]], Awaitable[None]]
    ) -> ShareResult:
        config = engine.config.with_changes(inputs=self.inputs, rate=self.rate)
        live = LiveState()
        window: ReorderWindow[Event] = ReorderWindow(self.plan.reorder)
        whole = _schedule(config, self.plan, live, ReadCounts(), window)
        figures = live.figures
        series = (
            None if self.series is None else SeriesWriter(self.series, None, horizon=self.horizon)
        )

        async def count_and_emit(batch: list[Result]) -> None:
            for result in batch:
                figures.add_result(result)
            if series is not None:
                series.add(batch, origin=self.origin)
            await emit(batch)

        driver = _Driver(engine, self.plan, live, origin=self.origin)
        try:
            elapsed = await driver.run(every_nth(whole, self.index, self.count), count_and_emit)
        finally:
            if series is not None:
                series.close()
        attempts = engine.state.stats.attempts
        return ShareResult(figures, live.scheduled, window.late, elapsed, attempts, live.cut_off)


def shares(
    plan: LoadPlan,
    *,
    inputs: tuple[str, ...],
    rate: float | None,
    count: int,
    now: float,
    series: str | None = None,
    horizon: float = 0.0,
) -> list[LoadShare]:
    """The N shares of one plan, starting START_LEAD_S after `now` (time.time())."""
    per_worker = replace(plan, max_in_flight=max(1, math.ceil(plan.slots / count)))
    origin = round(now + START_LEAD_S, 6)  # on the records' grid, as the driver's own
    return [
        LoadShare(per_worker, inputs, rate, i, count, origin, series, horizon) for i in range(count)
    ]


async def every_nth(
    schedule: AsyncGenerator[Scheduled, None], index: int, count: int
) -> AsyncGenerator[Scheduled, None]:
    """Slots index, index+count, ... of `schedule`; its invalid lines (due None) only
    for worker 0."""
    slot = 0
    async with aclosing(schedule):
        async for due, item in schedule:
            if due is None:
                if index == 0:
                    yield due, item
                continue
            if slot % count == index:
                yield due, item
            slot += 1


def merge_results(results: list[ShareResult]) -> ShareResult:
    """The workers' figures as one run's: sums, merged histograms, one series."""
    figures = Figures()
    for result in results:
        merge_figures(figures, result.figures)
    return ShareResult(
        figures,
        scheduled=sum(r.scheduled for r in results),
        late_in_log=max((r.late_in_log for r in results), default=0),  # each saw the whole log
        elapsed_s=max((r.elapsed_s for r in results), default=0.0),
        attempts=sum(r.attempts for r in results),
        cut_off=sum(r.cut_off for r in results),
    )


def merge_figures(into: Figures, other: Figures) -> None:
    """Add `other` to `into`, field by field (a field added to Figures that is a count,
    a Counter or a Histogram is merged without a change here)."""
    other_series = other.timeline()
    into.timeline()
    for f in fields(Figures):
        name = f.name
        mine, theirs = getattr(into, name), getattr(other, name)
        if name in ("first", "origin", "first_sent"):
            if theirs is not None and (mine is None or theirs < mine):
                setattr(into, name, theirs)
        elif name in ("last", "last_sent"):
            if theirs is not None and (mine is None or theirs > mine):
                setattr(into, name, theirs)
        elif isinstance(mine, Counter):
            mine.update(theirs)
        elif isinstance(mine, Histogram):
            mine.merge(theirs)
        elif isinstance(mine, int) and name != "max_points":
            setattr(into, name, mine + theirs)
    if other_series is None:
        return
    if into.series is None:
        into.series = Series(origin=other_series.origin, max_points=into.max_points)
    half = other_series.width / 2  # the middle of each bucket: no rounding across edges
    for offset, bucket in other_series.points():
        into.series.at(other_series.origin + offset + half).merge(bucket)
