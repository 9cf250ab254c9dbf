"""The schedules of `load` (the input cycled at a planned rate) and `replay` (each event at
its recorded time): async generators of (due offset, item), read on a worker thread.

Rules:
- Load cycles its input until the schedule ends (`loop=False`: once through). A small
  input (and stdin) is cycled from memory, a large file re-read from disk, so memory
  holds at most `_CACHE_EVENTS` events whatever the run length.
- An invalid line is answered once (due None: written at once), not once per cycle.
- Replay reorders slightly out-of-order logs in a bounded window (`ReorderWindow`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import replace

from engine.config import Config
from engine.core.errors import ConfigError
from engine.core.events import Event, Invalid, Item, ReadCounts
from engine.core.pacing import Pacer, ReorderWindow, ReplaySchedule
from engine.files.accesslog import read_replay_items
from engine.files.sources import STDIN
from engine.load.plan import LoadPlan, Scheduled
from engine.runtime.feeds import READ_BATCH, event_defaults, file_feed, thread_batches

_CACHE_EVENTS = 100_000


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
        storage_options=config.storage_options,
    )


async def replay_schedule(
    config: Config, plan: LoadPlan, *, counts: ReadCounts, window: ReorderWindow[Event]
) -> AsyncGenerator[Scheduled, None]:
    """Events at their recorded time, scaled and clamped, through a reorder window."""
    sched = ReplaySchedule(speed=plan.speed, max_gap=plan.max_gap, rate=config.rate)
    batches = thread_batches(_replay_items(config, plan.access_log, counts), READ_BATCH)
    async with aclosing(batches):
        async for batch in batches:
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
