"""The package's entry points: `run` (local, --workers or Ray), `deliver`, `run_load`.

Each picks its driver; every driver opens its run with `runtime.session.open_run`, so
what a run checks before sending, how it redacts and how it ends are written once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

import anyio

from engine.config import Config
from engine.core.records import Result
from engine.core.stats import Summary
from engine.errors import ConfigError, plain_engine_errors
from engine.load.driver import run_load
from engine.runtime.feeds import event_defaults, file_feed, mapping_feed, skip_answered
from engine.runtime.session import open_run

__all__ = ["deliver", "run", "run_load"]


async def run(config: Config, *, handle_signals: bool = False) -> Summary:
    """Run a batch as configured: inputs -> delivery calls -> JSONL output. Returns the summary.

    One process, `config.workers` processes, or a Ray cluster (`backend="ray"`). Raises
    ConfigError / InputError before anything is sent, FatalError when the run cannot go
    on. `handle_signals` (the CLI) turns SIGINT/SIGTERM into a graceful halt; call it
    from the main thread.
    """
    config = config.validated()
    if config.backend == "ray":
        from engine.distributed.ray_backend import run_ray  # Ray loads only when asked

        return await run_ray(config)
    if config.workers > 1:
        from engine.multiproc.driver import run_workers

        return await run_workers(config, handle_signals=handle_signals)
    return await run_local(config, handle_signals=handle_signals)


async def run_local(config: Config, *, handle_signals: bool = False) -> Summary:
    """`run` in this process: one engine, one task group."""
    async with open_run(config) as session:
        engine = session.engine()
        feed = file_feed(session.config, session.counts)
        if session.resume is not None:
            feed = skip_answered(feed, session.resume, engine.state.count_resumed)
        summary = await engine.execute(
            feed,
            session.emit,
            session.counts,
            handle_signals=handle_signals,
            write_now=session.write,
        )
        sink = session.sink
    assert sink is not None
    if config.shard is not None and sink.name != "<stdout>" and summary.stopped is None:
        from engine.files.manifests import write_shard_manifest

        write_shard_manifest(config, records=session.counts.records)
    return summary


async def deliver(
    events: Iterable[Mapping[str, object]] | AsyncIterator[Mapping[str, object]],
    config: Config,
) -> AsyncIterator[Result]:
    """Send each event and yield its Result as it completes (input order with `ordered`).

    Use it with `async for`; to stop early, wrap it in `contextlib.aclosing`. The results
    are yielded, not written: a config with `workers`, `output` or `resume` is refused.
    """
    refused = [
        name
        for name, given in (
            ("workers", config.workers != 1),
            ("output", config.output is not None),
            ("resume", config.resume),
        )
        if given
    ]
    if refused:
        raise ConfigError(
            f"deliver() yields results in this process; it cannot honour {', '.join(refused)} "
            "(use engine.run for a run that writes an output)"
        )
    config = config.with_changes(inputs=("<events>",)).validated()
    send, receive = anyio.create_memory_object_stream[Result](config.concurrency)

    async def produce() -> None:
        async with send, open_run(config, output=False, inputs=False) as session:

            async def emit(batch: list[Result]) -> None:
                for result in batch:
                    await send.send(result)

            feed = mapping_feed(events, event_defaults(session.config))
            await session.engine().execute(feed, emit)

    with plain_engine_errors():
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with receive:
                async for result in receive:
                    yield result
