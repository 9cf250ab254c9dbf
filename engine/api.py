"""The package's entry points: `run` (local, --workers or Ray), `deliver`, `run_load`.

Each one picks its driver; every driver opens its run with `run.session.open_run`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack

import anyio

from engine.config import Config
from engine.core.events import ReadCounts
from engine.core.records import Result, jsonl
from engine.core.secrets import MIN_SECRET_LENGTH
from engine.core.stats import Summary
from engine.errors import plain_engine_errors
from engine.files.sinks import JsonlSink, open_resume
from engine.files.sources import check_inputs
from engine.load.driver import run_load
from engine.runtime.engine import Engine, _open, _skip_answered, redact_output
from engine.runtime.feeds import event_defaults, file_feed, mapping_feed

__all__ = ["deliver", "run", "run_load"]


async def run(config: Config, *, handle_signals: bool = False) -> Summary:
    """Run a batch as configured: inputs -> delivery calls -> JSONL output. Returns the summary.

    Raises ConfigError / InputError before anything is sent, FatalError when the output
    cannot be written. `handle_signals` (the CLI) turns SIGINT/SIGTERM into a graceful
    halt; call it from the main thread.
    """
    config = config.validated()
    if config.workers > 1:
        from engine.multiproc.parent import run_workers  # it imports this module

        return await run_workers(config, handle_signals=handle_signals)
    check_inputs(config.inputs)
    counts = ReadCounts()
    index = open_resume(config.output) if config.resume else None
    sink = JsonlSink(config.output, append=config.resume)
    secrets = tuple(
        s.encode()
        for s in (config.token, config.client_secret)
        if s and len(s) >= MIN_SECRET_LENGTH
    )
    engine: Engine | None = None

    def write(batch: list[Result]) -> None:
        sink.write(redact_output(jsonl(batch), secrets, engine))

    async def emit(batch: list[Result]) -> None:
        write(batch)

    try:
        with plain_engine_errors():
            async with AsyncExitStack() as stack:
                engine = await _open(config, stack)
                feed = file_feed(config, counts)
                if index is not None:
                    feed = _skip_answered(feed, index, engine.state)
                summary = await engine.execute(
                    feed, emit, counts, handle_signals=handle_signals, write_now=write
                )
    finally:
        sink.close()
    if config.shard is not None and sink.name != "<stdout>" and summary.stopped is None:
        from engine.distributed.merge import write_shard_manifest

        write_shard_manifest(config, records=counts.records)
    return summary


async def deliver(
    events: Iterable[Mapping[str, object]] | AsyncIterator[Mapping[str, object]],
    config: Config,
) -> AsyncIterator[Result]:
    """Send each event and yield its Result as it completes (input order with `ordered`).

    Use it with `async for`; to stop early, wrap it in `contextlib.aclosing`.
    """
    config = config.with_changes(inputs=("<events>",)).validated()
    send, receive = anyio.create_memory_object_stream[Result](config.concurrency)

    async def produce() -> None:
        async with send, AsyncExitStack() as stack:
            engine = await _open(config, stack)

            async def emit(batch: list[Result]) -> None:
                for result in batch:
                    await send.send(result)

            await engine.execute(mapping_feed(events, event_defaults(config)), emit)

    with plain_engine_errors():
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with receive:
                async for result in receive:
                    yield result
