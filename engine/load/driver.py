"""Open-model load tests and traffic replay: calls start on a schedule, whatever the latency.

    schedule --(due, event)--> dispatcher --hand-off, no buffer--> max_in_flight workers
                                   |                                   | (Engine.process)
                                   +-- dropped / invalid --> results <-+
                                                               |
                                                  Engine._write --> emit (sink, figures)

Rules:
- The dispatcher sleeps until each call is due and hands it to a worker that is idle
  *now* (a zero-size stream: `send_nowait` succeeds only when a worker is waiting).
  When all `max_in_flight` workers are busy, `load` drops the call by default (a record
  with error_kind "dropped"; never silently delayed, so a slow server cannot slow the
  schedule: closed-model tools do, and hide the queueing, coordinated omission).
  `replay`, or `when_full="wait"`, waits for a worker instead: the schedule is still
  the one stamped on the records, and the wait shows as sent_at - scheduled_at.
- Every record carries `scheduled_at` (the intended start) and `sent_at` (the real one);
  `Figures` reports latency from both.
- A stalled client (CPU, GC) makes up its late calls at most 4% above the scheduled
  rate in any 1-second window (pacing.BurstCap): never a burst the schedule did not ask
  for; the lateness is in the records.
- Sending, retrying on 401, writing and fail-fast are the batch engine's
  (runner.Engine): one sender, whichever the mode.
- Load cycles its input until the schedule ends (`loop=False`: once through). A small
  input (and stdin) is cycled from memory, a large file re-read from disk, so memory
  holds at most `_CACHE_EVENTS` events whatever the run length.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field, replace
from typing import Literal

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from engine.config import Config
from engine.core.events import Event, Invalid, Item, ReadCounts
from engine.core.pacing import BurstCap, Pacer, ReorderWindow, ReplaySchedule
from engine.core.records import Result, dropped, invalid, jsonl
from engine.core.secrets import MIN_SECRET_LENGTH
from engine.core.series import Figures
from engine.core.stats import Summary, summarize
from engine.errors import ConfigError, plain_engine_errors
from engine.files.accesslog import read_replay_items
from engine.files.sinks import JsonlSink
from engine.files.sources import STDIN, check_inputs, next_batch
from engine.runtime.engine import (
    Emit,
    Engine,
    _open,
    redact_output,
)
from engine.runtime.feeds import READ_BATCH, event_defaults, file_feed

Scheduled = tuple[float | None, Item]  # (due offset in seconds, item); None: write at once

DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_REORDER = 256
_CACHE_EVENTS = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPlan:
    """What `load` / `replay` adds to the batch Config (the schedule and its limits)."""

    mode: Literal["load", "replay"] = "load"
    pacer: Pacer | None = None
    loop: bool = True
    speed: float = 1.0
    max_gap: float | None = None
    reorder: int = DEFAULT_REORDER
    access_log: bool = False
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    #: With every slot busy: "drop" the call (load's default) or "wait" for a slot
    #: (replay's default; wrk2's model: the wait counts in the latency from the schedule).
    when_full: Literal["drop", "wait"] | None = None

    @property
    def drops(self) -> bool:
        return (self.when_full or ("drop" if self.mode == "load" else "wait")) == "drop"

    def validated(self) -> LoadPlan:
        if self.mode == "load" and self.pacer is None:
            raise ConfigError("load needs a schedule: --rate, --ramp-from/--ramp-to or --stages")
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be at least 1, got {self.max_in_flight}")
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ConfigError(f"--speed must be a positive number, got {self.speed}")
        if self.max_gap is not None and not self.max_gap > 0:
            raise ConfigError(f"--max-gap must be a positive number of seconds, got {self.max_gap}")
        if self.reorder < 0:
            raise ConfigError(f"--reorder must be 0 or more, got {self.reorder}")
        if self.when_full not in (None, "drop", "wait"):
            raise ConfigError(f"--when-full must be drop or wait, got {self.when_full!r}")
        return self


@dataclass(slots=True)
class LiveState:
    """What the progress display reads while the run goes on."""

    figures: Figures = field(default_factory=Figures)
    scheduled: int = 0
    in_flight: int = 0
    total: int | None = None
    duration: float | None = None
    started: float = 0.0
    token: str = "static"


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    """A finished load or replay: the batch summary plus the open-model figures."""

    summary: Summary
    figures: dict[str, object]
    scheduled: int
    late_in_log: int = 0

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code

    def line(self) -> str:
        f = self.figures
        lat = f["corrected_latency_ms"]
        assert isinstance(lat, dict)
        text = f"{self.scheduled} scheduled, {f['sent']} sent, {f['dropped']} dropped"
        if lat.get("p50") is not None:
            text += (
                f"; latency from schedule p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
                f"max {lat['max']:.1f} ms"
            )
        if self.late_in_log:
            text += f"; {self.late_in_log} log lines past the reorder window sent at once"
        return text


# -- schedules ------------------------------------------------------------------------------


async def _cached(events: list[Event]) -> AsyncGenerator[list[Item], None]:
    for i in range(0, len(events), READ_BATCH):
        yield list(events[i : i + READ_BATCH])


async def load_schedule(
    config: Config, pacer: Pacer, *, loop: bool, counts: ReadCounts
) -> AsyncGenerator[Scheduled, None]:
    """The input's events, cycled, each with its due time; record seq = hit number."""
    hits = 0
    cache: list[Event] | None = []
    first_pass = True
    while True:
        sent_in_pass = 0
        feed = file_feed(config, counts) if cache is None or first_pass else _cached(cache)
        async with aclosing(feed):
            async for batch in feed:
                for item in batch:
                    if isinstance(item, Invalid):
                        if first_pass:  # answered once, not once per cycle
                            yield None, item
                        continue
                    if first_pass and cache is not None:
                        cache.append(item)
                        if len(cache) > _CACHE_EVENTS:
                            if STDIN in config.inputs and loop:
                                raise ConfigError(
                                    f"stdin holds more than {_CACHE_EVENTS} events: give a "
                                    "file to cycle it, or --no-loop"
                                )
                            cache = None
                    due = pacer.due(hits)
                    if due is None:
                        return
                    yield due, replace(item, seq=hits)
                    hits += 1
                    sent_in_pass += 1
        if first_pass and sent_in_pass == 0:
            if hits == 0:
                raise ConfigError("no valid event in the input: nothing to send")
        if not loop or sent_in_pass == 0:
            return
        first_pass = False


def _replay_items(config: Config, access_log: bool, counts: ReadCounts) -> Iterator[Item]:
    return read_replay_items(
        config.inputs,
        input_format="log" if access_log else config.input_format,
        defaults=event_defaults(config),
        max_line_bytes=config.max_line_bytes,
        counts=counts,
    )


async def replay_schedule(
    config: Config, plan: LoadPlan, *, counts: ReadCounts, window: ReorderWindow[Event]
) -> AsyncGenerator[Scheduled, None]:
    """Events at their recorded time, scaled and clamped, through a reorder window."""
    sched = ReplaySchedule(speed=plan.speed, max_gap=plan.max_gap, rate=config.rate)
    items = _replay_items(config, plan.access_log, counts)
    try:
        while batch := await anyio.to_thread.run_sync(next_batch, items, READ_BATCH):
            for item in batch:
                if isinstance(item, Invalid):
                    yield None, item
                elif item.timestamp is None:
                    yield (
                        None,
                        Invalid(
                            item.seq,
                            item.source,
                            item.id,
                            "no timestamp: replay sends each event at its recorded time",
                        ),
                    )
                else:
                    for ts, event in window.push(item.timestamp, item):
                        yield sched.due(ts), event
        for ts, event in window.drain():
            yield sched.due(ts), event
    finally:
        items.close()  # type: ignore[attr-defined]


# -- the dispatcher -------------------------------------------------------------------------


class _Driver:
    def __init__(self, engine: Engine, plan: LoadPlan, live: LiveState) -> None:
        self.engine = engine
        self.plan = plan
        self.live = live
        self.start: float | None = None

    async def _dispatch(
        self,
        schedule: AsyncGenerator[Scheduled, None],
        jobs: MemoryObjectSendStream[tuple[Event, float]],
        results: ObjectSendStream[Result],
    ) -> None:
        live = self.live
        drop = self.plan.drops
        start = wall_start = 0.0
        cap = BurstCap()
        async with jobs, results, aclosing(schedule):
            async for due, item in schedule:
                if self.start is None:
                    # The clock starts with the first event in hand and every worker
                    # waiting, so start-up work does not make the first calls late.
                    start = self.start = anyio.current_time()
                    wall_start = time.time()
                    live.figures.origin = wall_start
                    live.started = time.monotonic()
                if self.engine.state.stopped is not None:
                    return
                if due is None:
                    assert isinstance(item, Invalid)
                    await results.send(invalid(item))
                    continue
                assert isinstance(item, Event)
                deadline = start + cap.earliest(due)
                if deadline > anyio.current_time():
                    await anyio.sleep_until(deadline)
                else:
                    await anyio.lowlevel.checkpoint()
                cap.sent(anyio.current_time() - start)
                scheduled_at = wall_start + due
                live.scheduled += 1
                if not drop:
                    await jobs.send((item, scheduled_at))
                    continue
                try:
                    jobs.send_nowait((item, scheduled_at))
                except anyio.WouldBlock:
                    await results.send(dropped(item, scheduled_at, self.plan.max_in_flight))

    async def _work(
        self,
        jobs: ObjectReceiveStream[tuple[Event, float]],
        results: ObjectSendStream[Result],
    ) -> None:
        live = self.live
        async with jobs, results:
            async for event, scheduled_at in jobs:
                live.in_flight += 1
                try:
                    result = await self.engine.process(event)
                finally:
                    live.in_flight -= 1
                if result is None:  # the run halted (SIGINT) before the call: not answered
                    continue
                await results.send(replace(result, scheduled_at=round(scheduled_at, 6)))

    async def run(self, schedule: AsyncGenerator[Scheduled, None], emit: Emit) -> float:
        """Drive the schedule to its end; returns the elapsed seconds."""
        engine = self.engine
        limit = self.plan.max_in_flight
        jobs_send, jobs_receive = anyio.create_memory_object_stream[tuple[Event, float]](0)
        results_send, results_receive = anyio.create_memory_object_stream[Result](
            max(64, limit * 2)
        )
        async with anyio.create_task_group() as tg:
            async with jobs_receive, results_send:
                for _ in range(limit):
                    tg.start_soon(self._work, jobs_receive.clone(), results_send.clone())
                tg.start_soon(self._dispatch, schedule, jobs_send, results_send.clone())
            await engine.write_results(results_receive, emit)
        return 0.0 if self.start is None else anyio.current_time() - self.start


# -- entry point ------------------------------------------------------------------------------


async def run_load(
    config: Config, plan: LoadPlan, *, live: LiveState | None = None, progress: bool = False
) -> LoadOutcome:
    """Run `load` or `replay` as planned: input -> scheduled calls -> JSONL records."""
    config = config.validated()
    plan = plan.validated()
    check_inputs(config.inputs)
    live = live or LiveState()
    counts = ReadCounts()
    sink = JsonlSink(config.output)
    window: ReorderWindow[Event] = ReorderWindow(plan.reorder)
    if plan.mode == "load":
        assert plan.pacer is not None
        schedule = load_schedule(config, plan.pacer, loop=plan.loop, counts=counts)
        total = getattr(plan.pacer, "total_hits", None)
        live.total = total if isinstance(total, int) else None
        duration = getattr(plan.pacer, "duration", None)
        live.duration = (
            duration if isinstance(duration, float) and math.isfinite(duration) else None
        )
    else:
        schedule = replay_schedule(config, plan, counts=counts, window=window)
    # The schedule paces and bounds the calls: no batch limiter, one connection per worker.
    engine_config = config.with_changes(
        rate=None, concurrency=plan.max_in_flight, ordered=False, progress=False
    )
    secrets = tuple(
        s.encode()
        for s in (config.token, config.client_secret)
        if s and len(s) >= MIN_SECRET_LENGTH
    )
    figures = live.figures
    engine: Engine | None = None

    async def emit(batch: list[Result]) -> None:
        for result in batch:
            figures.add_result(result)
        data = jsonl(batch)
        sink.write(redact_output(data, secrets, engine))  # a server may echo the token

    try:
        with plain_engine_errors():
            async with AsyncExitStack() as stack:
                engine = await _open(engine_config, stack)
                token = engine.config.token
                if token is not None and not config.token and len(token) >= MIN_SECRET_LENGTH:
                    secrets = (token.encode(),)
                live.token = "mock token" if config.mock else type(engine.tokens).__name__
                async with anyio.create_task_group() as tg:
                    tg.start_soon(engine.keep_tokens)
                    if progress:
                        from engine.load.progress import show_progress

                        tg.start_soon(show_progress, live)
                    elapsed = await _Driver(engine, plan, live).run(schedule, emit)
                    tg.cancel_scope.cancel()
    finally:
        sink.close()
    stats = engine.state.stats
    stats.blank_lines = counts.blank_lines
    summary = summarize(
        stats, elapsed_s=elapsed, stopped=engine.state.stopped, tokens=engine.tokens.token_stats()
    )
    sent = stats.events - stats.invalid - figures.dropped
    summary = replace(summary, rate=sent / elapsed if elapsed > 0 else 0.0)
    return LoadOutcome(summary, figures.to_dict(), live.scheduled, window.late)
