"""Feeds: where the engine's items come from, as batches (async generators).

`thread_batches` is the one loop that reads input in batches; every driver reads
through it. The items are read on a thread of their own and taken as they come
(runtime/readahead.py: the event loop never waits on a pipe, a terminal, a store or a
network filesystem, and an item read is never held back for the next ones), except
when every input is a regular file of lines on a local filesystem (`reads_inline`):
then in the loop's own thread, between
its turns, for at most INLINE_SLICE_S at a time (then the batch is cut short). Such a
read does not block (the page cache, read ahead), and the parsing is CPU the loop could
not have run meanwhile anyway (the GIL); a second thread only fought for the GIL, which
cost 3-6 µs of CPU per event (issue 18). `file_feed` reads the configured inputs;
`mapping_feed` takes a library caller's dicts. Both number items 0, 1, ... in input
order: `seq` is what resume, ordering and sharding rely on.
"""

from __future__ import annotations

import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import aclosing
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from engine.config import Config
from engine.core.events import (
    EventDefaults,
    Invalid,
    Item,
    ReadCounts,
    make_event,
    printable,
)
from engine.core.shard import ShardSpec
from engine.files.localfs import is_local_file
from engine.files.resume import ResumeIndex
from engine.files.sources import STDIN, read_items, source_format
from engine.files.storage import is_url
from engine.runtime.readahead import ReadAhead

Feed = AsyncGenerator[list[Item], None]
READ_BATCH = 256
T = TypeVar("T")


async def thread_batches(
    items: Iterator[T], size: int = READ_BATCH, *, inline: bool = False
) -> AsyncGenerator[list[T], None]:
    """`items` in lists of up to `size`: read on a thread of their own and taken as they
    come (runtime/readahead.py: an item never waits for the next ones), or, `inline`,
    read in the loop's thread (see the module's rules).

    At the end the items are closed (a generator's files), but by a thread blocked in a
    read of a silent pipe: a halted run does not wait for it."""
    if not inline:
        ahead = ReadAhead(items, 2 * size)
        try:
            while batch := await ahead.take(size):
                yield batch
        finally:
            ahead.close()
        return
    try:
        while batch := _slice(items, size):
            yield batch
            await anyio.lowlevel.checkpoint()  # the loop's turn between batches
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


#: The longest an inline read holds the loop before the loop gets a turn: the GIL's
#: switch interval, what a worker thread's read used to leave it. A batch of 256 lines
#: near --max-line-bytes takes seconds to parse; an item takes what it takes.
INLINE_SLICE_S = 0.005


def _slice(items: Iterator[T], size: int) -> list[T]:
    """Up to `size` items, fewer when reading them took INLINE_SLICE_S."""
    batch: list[T] = []
    append, clock = batch.append, time.perf_counter
    deadline = clock() + INLINE_SLICE_S
    for item in items:
        append(item)
        if len(batch) >= size or clock() > deadline:
            break
    return batch


def event_defaults(config: Config) -> EventDefaults:
    return EventDefaults(partner_id=config.partner_id, user_agent=None, ip=config.ip)


def file_feed(config: Config, counts: ReadCounts) -> Feed:
    """The configured inputs, read in batches: on a worker thread, or in the loop's own
    when they are local files (`reads_inline`)."""
    reader = read_items(
        config.inputs,
        input_format=config.input_format,
        defaults=event_defaults(config),
        max_line_bytes=config.max_line_bytes,
        counts=counts,
        storage_options=config.storage_options,
        # --shard: the reader keeps the shard's records (a Parquet file's row groups).
        shard=None if config.shard is None else ShardSpec(*config.shard, by=config.shard_by),
    )
    return thread_batches(reader, READ_BATCH, inline=reads_inline(config))


def reads_inline(config: Config) -> bool:
    """Whether every input is a regular file of lines (JSONL or CSV, gzip or not) on a
    local filesystem (files/localfs.py): read in the loop's thread (the module's rules).
    stdin, a pipe, a URL, a network filesystem or Parquet (pyarrow reads a whole row
    group at once) keep the worker thread."""
    for path in config.inputs:
        if path == STDIN or is_url(path):
            return False
        if source_format(path, config.input_format) == "parquet":
            return False
        if not is_local_file(path):  # a pipe, a network filesystem, missing...
            return False
    return True


async def mapping_feed(
    events: Iterable[Mapping[str, object]] | AsyncIterator[Mapping[str, object]],
    defaults: EventDefaults,
) -> Feed:
    """Events given by a library caller, as dicts (sync or async iterable)."""
    seq = 0

    def one(obj: Mapping[str, object]) -> Item:
        source = f"<events>:{seq + 1}"
        if not isinstance(obj, Mapping):
            return Invalid(seq, source, None, f"event is not a mapping ({type(obj).__name__})")
        if not all(map(_is_str, obj)):  # JSON and Parquet names are str; a dict's may not be
            return _bad_key(obj, seq, source)
        return make_event(obj, seq=seq, source=source, defaults=defaults)

    if isinstance(events, AsyncIterator):
        async for obj in events:
            yield [one(obj)]
            seq += 1
    else:
        batch: list[Item] = []
        for obj in events:
            batch.append(one(obj))
            seq += 1
            if len(batch) >= READ_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


_is_str = str.__instancecheck__


def _bad_key(obj: Mapping[Any, object], seq: int, source: str) -> Invalid:
    """The record of a library caller's event with a key that is not a str (an int, a
    tuple, bytes): no parameter name can be made of it."""
    key = next(k for k in obj if not isinstance(k, str))
    raw_id = obj.get("id")
    event_id = printable(raw_id) if isinstance(raw_id, str) else None
    error = f"event key {printable(repr(key))[:80]} is not a string ({type(key).__name__})"
    return Invalid(seq, source, event_id, error)


def skip_answered(
    feed: Feed, index: ResumeIndex, skipped: Callable[[int], None], counts: ReadCounts
) -> Feed:
    """`feed` without the events the output already answers (`--resume`); `skipped` is
    told how many each batch lost. Read to its end, `index` is told how many events the
    input holds (`ResumeIndex.input_read`)."""

    async def kept_batches() -> Feed:
        end = 0
        async with aclosing(feed):
            async for batch in feed:
                end = batch[-1].seq + 1 if batch else end
                kept = [
                    item for item in batch if not index.answered(item.seq, item.source, item.id)
                ]
                if len(kept) != len(batch):
                    skipped(len(batch) - len(kept))
                if kept:
                    yield kept
        # --shard: the feed holds the shard's events only; counts.records every one read.
        index.input_read(max(end, counts.records))

    return kept_batches()
