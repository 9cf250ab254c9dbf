"""Open-model load tests and traffic replay: calls start on a schedule, whatever the latency.

    schedule --(due, event)--> dispatcher --hand-off, no buffer--> max_in_flight workers
                                   |                                   | (Engine.process)
                                   +-- dropped / invalid --> results <-+
                                                               |
                                                  Engine.write_results --> emit (sink, figures)

Rules:
- The dispatcher sleeps until each call is due and hands it to a worker that is idle
  *now* (a zero-size stream: `send_nowait` succeeds only when a worker is waiting), or
  to a new one while fewer than `max_in_flight` exist (a few wait from the start: a
  computed --max-in-flight, rate x timeout, may be tens of thousands).
  When all `max_in_flight` workers are busy, `load` drops the call by default (a record
  with error_kind "dropped"; never silently delayed, so a slow server cannot slow the
  schedule: closed-model tools do, and hide the queueing, coordinated omission).
  `replay`, or `when_full="wait"`, waits for a worker instead: the schedule is still
  the one stamped on the records, and the wait shows as sent_at - scheduled_at.
- Every call counted as scheduled is sent, dropped, cut off in flight when the run's
  --grace ran out (`LiveState.cut_off`), or not sent because the run stopped first
  (LoadOutcome.not_sent: the rest; a hand-off cut short by the halt cannot tell whether
  a worker took the call, so that figure is what is left, not counted where it happens).
- Every record carries `scheduled_at` (the intended start) and `sent_at` (the real one);
  `Figures` reports latency from both.
- A stalled client (CPU, GC, SIGSTOP) makes up its late calls at most 25% above the
  scheduled rate (pacing.CatchUp: no 100 ms window carries more than 1.25x its share),
  never a burst the schedule did not ask for; the lateness is in the records. With
  `--catch-up skip` the calls more than 100 ms late are dropped and counted instead.
- Sending, retrying on 401, writing and fail-fast are the batch engine's
  (runtime.engine.Engine): one sender, whichever the mode; the run is opened by
  runtime.session.open_run like every other.
- The schedules themselves are engine/load/schedules.py's.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import replace
from functools import partial

import anyio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from engine.config import Config
from engine.core.events import Event, Invalid, ReadCounts
from engine.core.pacing import CatchUp, ReorderWindow
from engine.core.records import Result, dropped, invalid
from engine.core.secrets import Secrets
from engine.core.stats import Histogram, summarize
from engine.core.stops import EXIT_STOPPED
from engine.core.tally import Progress, record_lag
from engine.load.plan import LiveState, LoadOutcome, LoadPlan, Scheduled, sized_plan
from engine.load.schedules import load_schedule, replay_schedule
from engine.load.series_file import SeriesWriter, header
from engine.runtime.batches import BatchQueue
from engine.runtime.engine import Emit, Engine
from engine.runtime.loop import check_open_files, connection_budget
from engine.runtime.session import open_run
from engine.runtime.watch import Probe, Watch, engine_probe, input_progress

# -- the dispatcher -------------------------------------------------------------------------

#: Workers waiting from the start; the rest start when the calls in flight need them.
_READY_WORKERS = 256


class _Driver:
    def __init__(
        self, engine: Engine, plan: LoadPlan, live: LiveState, *, origin: float | None = None
    ) -> None:
        self.engine = engine
        self.plan = plan
        self.live = live
        self.start: float | None = None
        #: The wall-clock start shared by the workers of a --workers run (each drives its
        #: share of one schedule from it); None: the first event in hand starts the clock.
        self.origin = origin

    async def _dispatch(
        self,
        schedule: AsyncGenerator[Scheduled, None],
        jobs: MemoryObjectSendStream[tuple[Event, float]],
        results: BatchQueue[Result],
        spawn: Callable[[tuple[Event, float]], bool],
    ) -> None:
        live = self.live
        drop = self.plan.drops
        start = wall_start = 0.0
        cap = CatchUp(skip=self.plan.catch_up == "skip")
        async with jobs, aclosing(schedule):
            async for due, item in schedule:
                if self.start is None:
                    # The clock starts with the first event in hand and every worker
                    # waiting, so start-up work does not make the first calls late.
                    start = self.start = anyio.current_time()
                    now = time.time()
                    # On the records' microsecond grid (scheduled_at is rounded to 6
                    # places): an origin between two microseconds put a first call
                    # rounded down at -1 s of the series.
                    wall_start = round(now if self.origin is None else self.origin, 6)
                    start = self.start = start + (wall_start - now)
                    live.figures.origin = wall_start
                    live.started = time.monotonic()
                if self.engine.state.stopped is not None:
                    return
                if due is None:
                    assert isinstance(item, Invalid)
                    await results.put([invalid(item)])
                    continue
                assert isinstance(item, Event)
                deadline = start + cap.earliest(due)
                if deadline > anyio.current_time():
                    await anyio.sleep_until(deadline)
                else:
                    await anyio.lowlevel.checkpoint()
                scheduled_at = wall_start + due
                live.scheduled += 1
                late = anyio.current_time() - start - due
                if cap.missed(due, due + late):  # --catch-up skip: k6's dropped iteration
                    missed = dropped(item, scheduled_at, self.plan.slots)
                    error = f"dropped: {late:.3f}s behind the schedule (--catch-up skip)"
                    await results.put([replace(missed, error=error)])
                    continue
                cap.sent(anyio.current_time() - start)
                job = (item, scheduled_at)
                try:
                    jobs.send_nowait(job)  # a worker idle now
                except anyio.WouldBlock:
                    if spawn(job):  # none idle, fewer than --max-in-flight: one more
                        continue
                    if not drop:
                        await jobs.send(job)
                        continue
                    await results.put([dropped(item, scheduled_at, self.plan.slots)])

    async def _dispatch_until_halt(
        self,
        schedule: AsyncGenerator[Scheduled, None],
        jobs: MemoryObjectSendStream[tuple[Event, float]],
        results: BatchQueue[Result],
        spawn: Callable[[tuple[Event, float]], bool],
    ) -> None:
        """`_dispatch` until the run halts (a signal, a stop of its own: the engine's
        feed scope), even mid-sleep: no call is scheduled after; those in flight go on."""
        try:
            with self.engine.shutdown.feed_scope:
                await self._dispatch(schedule, jobs, results, spawn)
        finally:
            jobs.close()  # the workers end once their calls have (also if cut short early)

    async def _work(
        self,
        jobs: ObjectReceiveStream[tuple[Event, float]],
        results: BatchQueue[Result],
        first: tuple[Event, float] | None = None,
    ) -> None:
        """One worker: `first` (a worker started for it), then each job handed over."""
        async with jobs:
            if first is not None:
                await self._call(*first, results)
            async for event, scheduled_at in jobs:
                await self._call(event, scheduled_at, results)

    async def _call(self, event: Event, scheduled_at: float, results: BatchQueue[Result]) -> None:
        live = self.live
        live.in_flight += 1
        try:
            result = await self.engine.process(event)
        except anyio.get_cancelled_exc_class():
            live.cut_off += 1  # in flight when --grace ran out (or a second signal)
            raise
        finally:
            live.in_flight -= 1
        if result is None:  # the run halted (SIGINT) before the call: not sent
            return  # (counted as LoadOutcome.not_sent: scheduled, with no record)
        await results.put([replace(result, scheduled_at=round(scheduled_at, 6))])

    async def run(self, schedule: AsyncGenerator[Scheduled, None], emit: Emit) -> float:
        """Drive the schedule to its end; returns the elapsed seconds."""
        engine = self.engine
        limit = self.plan.slots
        jobs_send, jobs_receive = anyio.create_memory_object_stream[tuple[Event, float]](0)
        results = BatchQueue[Result](max(64, limit * 2))

        async def produce() -> None:
            try:
                # The run's stop switches (runtime/shutdown.py), as `run`'s engine: --grace
                # after a signal (at once after a second), the calls in flight are cut off.
                with engine.shutdown.work_scope:
                    async with anyio.create_task_group() as tg, jobs_receive:
                        # A few workers wait from the start; more start as the calls in
                        # flight need them, up to --max-in-flight (computed, it can be
                        # rate x timeout: 55,000 tasks made at once cost 165 MB and made
                        # the first calls late).
                        started = min(limit, _READY_WORKERS)
                        for _ in range(started):
                            tg.start_soon(self._work, jobs_receive.clone(), results)
                        # (jobs_receive closes as this block ends: later workers clone this)
                        source = jobs_receive.clone()

                        def spawn(job: tuple[Event, float]) -> bool:
                            nonlocal started
                            if started >= limit:
                                return False
                            started += 1
                            tg.start_soon(self._work, source.clone(), results, job)
                            return True

                        async def dispatch() -> None:
                            with source:
                                await self._dispatch_until_halt(schedule, jobs_send, results, spawn)

                        tg.start_soon(dispatch)
            finally:
                results.close()  # the writer ends once it has every record

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await engine.write_results(results, emit)
        return 0.0 if self.start is None else anyio.current_time() - self.start


def connections(config: Config, plan: LoadPlan, slots: int) -> int:
    """The connection pool for `slots` calls in flight: one per slot, capped by the
    open-files limit when --max-in-flight was computed rather than given (given, a
    number past the limit is refused with exit 2: check_open_files)."""
    budget = connection_budget(config) if plan.computed else None
    return slots if budget is None else min(slots, budget)


# -- entry point ------------------------------------------------------------------------------


async def run_load(
    config: Config,
    plan: LoadPlan,
    *,
    live: LiveState | None = None,
    progress: bool = False,
    watch: Watch | None = None,
    handle_signals: bool = False,
) -> LoadOutcome:
    """Run `load` or `replay` as planned: input -> scheduled calls -> JSONL records.
    `watch`: the run's figures go there (--metrics-addr, --dashboard). `handle_signals`
    (the CLI): SIGINT/SIGTERM halt the schedule as they halt `run` (runtime/shutdown.py)."""
    config = config.validated()
    plan = sized_plan(config, plan.validated())
    live = live or LiveState()
    window: ReorderWindow[Event] = ReorderWindow(plan.reorder)
    # The schedule paces and bounds the calls: no batch limiter, one connection per slot
    # (a computed --max-in-flight: at most as many as the open-files limit allows).
    engine_config = config.with_changes(
        rate=None,
        concurrency=connections(config, plan, plan.slots),
        ordered=False,
        progress=False,
        resume=False,
    )
    figures = live.figures
    # Here the calls in flight are --max-in-flight's: the refusal names it, not -c.
    check_open_files(engine_config, option="--max-in-flight")
    async with open_run(engine_config) as session:
        session.resumable = False  # a schedule: its stop lines offer no --resume
        counts = session.counts
        schedule = _schedule(config, plan, live, counts, window)
        engine = session.engine()
        lag = Histogram() if watch is not None else None  # schedule -> send, when watched
        series = _series_writer(config, session.secrets, plan)

        async def emit(batch: list[Result]) -> None:
            for result in batch:
                figures.add_result(result)
            if series is not None:
                series.add(batch, origin=figures.origin)
            if lag is not None:
                record_lag(lag, batch)
            session.write(batch)

        if watch is not None:
            assert lag is not None
            watch.attach(_probe(engine, session.config, plan, live, lag, counts))

        live.token = "mock token" if config.mock else type(engine.tokens).__name__
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.keep_tokens)
            if handle_signals:  # a schedule has no --resume: the reason does not offer it
                watch_signals = partial(engine.shutdown.watch_signals, resumable=False)
                tg.start_soon(watch_signals, tg, config.grace)
            if progress:
                from engine.load.progress import show_progress

                tg.start_soon(show_progress, live, engine.tokens, plan.pacer)
            elapsed = await _Driver(engine, plan, live).run(schedule, emit)
            tg.cancel_scope.cancel()
        if series is not None:
            series.close(elapsed_s=elapsed, events=figures.events, invalid=figures.invalid)
    return _outcome(config, engine, live, window, blank_lines=counts.blank_lines, elapsed=elapsed)


def _outcome(
    config: Config,
    engine: Engine,
    live: LiveState,
    window: ReorderWindow[Event],
    *,
    blank_lines: int,
    elapsed: float,
) -> LoadOutcome:
    """The figures of a finished load or replay: the summary (its rate counts the calls
    sent, not the dropped), the schedule's view, and what was scheduled and late."""
    figures = live.figures
    stats = engine.state.stats
    stats.blank_lines = blank_lines
    summary = summarize(
        stats,
        elapsed_s=elapsed,
        # As Engine.execute: an interrupt's reason and exit code win over a stop's.
        stopped=engine.shutdown.reason or engine.state.stopped,
        stop_code=EXIT_STOPPED if engine.shutdown.reason else engine.state.stop_code,
        interrupted=engine.shutdown.interrupted,
        tokens=engine.tokens.token_stats(),
        schedule=figures.corrected,
    )
    # Calls sent per second over the span they were sent in (not the wait for answers).
    summary = replace(summary, rate=figures.rate)
    return LoadOutcome(
        summary,
        figures.to_dict(),
        live.scheduled,
        window.late,
        attempts=stats.attempts,
        retrying=config.retries > 0,
        cut_off=live.cut_off,
    )


def _series_writer(config: Config, secrets: Secrets, plan: LoadPlan) -> SeriesWriter | None:
    """--series FILE: its writer, the run's options in its header (secrets redacted)."""
    if config.series is None:
        return None
    head = header(config, secrets, mode=plan.mode, start=None)
    return SeriesWriter(config.series, head, horizon=series_horizon(config))


def series_horizon(config: Config) -> float:
    """A second of --series is complete once its last call can no longer be in flight."""
    return config.timeout * (1 + config.retries) + 2.0


def _probe(
    engine: Engine,
    config: Config,
    plan: LoadPlan,
    live: LiveState,
    lag: Histogram,
    counts: ReadCounts,
) -> Probe:
    """What --metrics-addr and --dashboard read of a load test or a replay."""
    from engine.load.progress import target_rate

    by_bytes = input_progress(counts, config.inputs)

    def progress(read: int, done: int) -> Progress | None:
        if plan.mode == "replay":
            return by_bytes(read, done)
        if live.duration is not None:
            elapsed = time.monotonic() - live.started if live.started else 0.0
            return Progress(min(elapsed, live.duration), live.duration, "seconds")
        if live.total:
            return Progress(float(live.scheduled), float(live.total), "events")
        return None

    return engine_probe(
        engine,
        mode=plan.mode,
        progress=progress,
        target_rate=(lambda t: target_rate(plan.pacer, t)) if plan.mode == "load" else None,
        corrected=live.figures.corrected,
        lag=lag,
        scheduled=lambda: live.scheduled,
        events_read=lambda: live.scheduled + engine.state.stats.invalid,
    )


def _schedule(
    config: Config,
    plan: LoadPlan,
    live: LiveState,
    counts: ReadCounts,
    window: ReorderWindow[Event],
) -> AsyncGenerator[Scheduled, None]:
    """The plan's schedule; what the live display knows of its length."""
    if plan.mode == "replay":
        return replay_schedule(config, plan, counts=counts, window=window)
    assert plan.pacer is not None
    total = getattr(plan.pacer, "total_hits", None)
    live.total = total if isinstance(total, int) else None
    duration = getattr(plan.pacer, "duration", None)
    live.duration = duration if isinstance(duration, float) and math.isfinite(duration) else None
    return load_schedule(config, plan.pacer, loop=plan.loop, counts=counts)
