"""The package's entry points: `run` (local, --workers or Ray), `deliver`, `run_load`.

Each picks its driver; every driver opens its run with `runtime.session.open_run`, so
what a run checks before sending, how it redacts and how it ends are written once.
`run` and `run_load` are watched here when the config asks (--metrics-addr,
--dashboard: engine/observe), around the driver, which feeds the `Watch`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from engine.config import Config
from engine.core.records import Result
from engine.core.secrets import Secrets
from engine.core.stats import Summary
from engine.errors import AuthError, ConfigError, FatalError, plain_engine_errors
from engine.runtime.feeds import event_defaults, file_feed, mapping_feed, skip_answered
from engine.runtime.session import RunSession, open_run

if TYPE_CHECKING:
    from engine.core.tally import Mode
    from engine.load.plan import LiveState, LoadOutcome, LoadPlan
    from engine.load.shares import ShareResult
    from engine.runtime.watch import Watch

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

        return await run_ray(config, handle_signals=handle_signals)
    async with watched(config, "run") as watch:
        if config.workers > 1:
            from engine.multiproc.driver import run_workers

            summary = await run_workers(config, handle_signals=handle_signals, watch=watch)
        else:
            summary = await run_local(config, handle_signals=handle_signals, watch=watch)
        if watch is not None:
            watch.ended(summary)  # a stopped or interrupted run is not lingered on
        return summary


async def run_load(
    config: Config,
    plan: LoadPlan,
    *,
    live: LiveState | None = None,
    progress: bool = False,
    handle_signals: bool = False,
) -> LoadOutcome:
    """Run `load` or `replay` as planned (engine/load/driver.py), watched when asked;
    with `config.workers` > 1 the schedule is split over that many processes
    (engine/load/shares.py), with one token, one output and one summary.
    `handle_signals` (the CLI): SIGINT/SIGTERM halt the schedule as they halt `run`."""
    # Lazy: `run` (and its start-up CPU, issue 18) never loads the load driver.
    from engine.load import driver as load_driver

    config = config.validated()
    async with watched(config, plan.mode) as watch:
        if config.workers > 1:
            outcome = await _load_workers(
                config, plan.validated(), watch=watch, progress=progress, signals=handle_signals
            )
        else:
            outcome = await load_driver.run_load(
                config, plan, live=live, progress=progress, watch=watch,
                handle_signals=handle_signals,
            )  # fmt: skip
        if watch is not None:
            watch.ended(outcome.summary)
        return outcome


async def _load_workers(
    config: Config, plan: LoadPlan, *, watch: Watch | None, progress: bool, signals: bool
) -> LoadOutcome:
    import time

    from engine.load import driver as load_driver
    from engine.load.plan import sized_plan
    from engine.load.series_file import header, open_shared
    from engine.load.shares import LoadShare, ShareResult, merge_results, shares
    from engine.load.summed import SummedLoad
    from engine.multiproc.driver import run_worker_jobs
    from engine.runtime.loop import check_open_files

    n = config.workers
    plan = sized_plan(config, plan)
    per_worker = max(1, -(-plan.slots // n))
    pool = load_driver.connections(config, plan, per_worker)
    # The calls in flight are --max-in-flight's (split over the workers), not -c's: the
    # parent's open files are counted, and a refusal worded, by them (as in one process).
    given = config
    config = config.with_changes(concurrency=pool * n)
    check_open_files(config, option="--max-in-flight")

    def jobs(session: RunSession) -> list[LoadShare]:
        horizon = load_driver.series_horizon(config)
        parts = shares(plan, inputs=config.inputs, rate=config.rate, count=n,
                       now=time.time(), series=config.series, horizon=horizon)  # fmt: skip
        if config.series is not None:  # the header first; the workers append their seconds
            shown = session.config.with_changes(concurrency=given.concurrency)
            head = header(shown, session.secrets, mode=plan.mode, start=None)
            open_shared(config.series, {**head, "start": parts[0].origin}, workers=n)
        return parts

    def share(worker: Config) -> Config:
        # The schedule paces and bounds the calls: no batch limiter, one slot per call.
        return worker.with_changes(rate=None, concurrency=pool)

    def merged(extras: dict[int, object]) -> ShareResult:
        return merge_results([r for r in extras.values() if isinstance(r, ShareResult)])

    def summary_args(extras: dict[int, object]) -> dict[str, Any]:
        done = merged(extras)
        more: dict[str, Any] = {"schedule": done.figures.corrected}
        return more | ({"elapsed_s": done.elapsed_s} if done.elapsed_s > 0 else {})

    # The parent shows and serves the schedule's view of the workers' summed figures.
    summary, extras = await run_worker_jobs(
        config.with_changes(progress=False),
        jobs,
        share=share,
        summary_args=summary_args,
        watch=watch,
        probe=lambda sums: SummedLoad(sums, plan).probe,
        view=(lambda sums: SummedLoad(sums, plan).view) if progress else None,
        handle_signals=signals,
    )
    return _load_outcome(config, summary, merged(extras))


def _load_outcome(config: Config, summary: Summary, done: ShareResult) -> LoadOutcome:
    """The outcome of a load run over workers from their merged shares; the --series
    file closed."""
    from engine.load.plan import LoadOutcome
    from engine.load.series_file import close_shared

    figures = done.figures
    elapsed = summary.elapsed_s
    if config.series is not None:
        close_shared(config.series, elapsed_s=elapsed, events=figures.events,
                     invalid=figures.invalid)  # fmt: skip
    summary = replace(summary, rate=figures.rate)  # sent over the span of the sends
    return LoadOutcome(
        summary,
        figures.to_dict(),
        done.scheduled,
        done.late_in_log,
        attempts=done.attempts,
        retrying=config.retries > 0,
        cut_off=done.cut_off,
    )


@asynccontextmanager
async def watched(config: Config, mode: Mode) -> AsyncIterator[Watch | None]:
    """The run's `Watch` and its servers when the config asks for them, else None."""
    if config.metrics_addr is None and config.dashboard is None:
        yield None
        return
    from engine.observe.serve import observed  # aiohttp.web, prometheus_client: when asked

    async with observed(config, mode) as watch:
        yield watch


async def run_local(
    config: Config, *, handle_signals: bool = False, watch: Watch | None = None
) -> Summary:
    """`run` in this process: one engine, one task group."""
    async with open_run(config, handle_signals=handle_signals) as session:
        engine = session.engine()
        if watch is not None:
            from engine.runtime.watch import engine_probe, input_progress

            progress = input_progress(session.counts, session.config.inputs)
            watch.attach(engine_probe(engine, progress=progress))
        feed = file_feed(session.config, session.counts)
        if session.resume is not None:
            resumed = engine.state.count_resumed
            feed = skip_answered(feed, session.resume, resumed, session.counts)
        summary = await engine.execute(
            feed,
            session.emit,
            session.counts,
            handle_signals=handle_signals,
            write_now=session.write,
        )
        session.summary = summary  # how the output closes (an -o URL's join) is told in it
        sink = session.sink
    summary = session.summary
    assert sink is not None
    assert summary is not None
    if config.shard is not None and sink.name != "<stdout>" and summary.stopped is None:
        from engine.files.manifests import write_shard_manifest

        write_shard_manifest(config, records=session.counts.records)
    return summary


async def deliver(
    events: Iterable[Mapping[str, object]] | AsyncIterator[Mapping[str, object]],
    config: Config,
) -> AsyncIterator[Result]:
    """Send each event and yield its Result as it completes (input order with `ordered`).

    Use it with `async for`; to stop early, wrap it in `contextlib.aclosing`: the run's
    task group lives in this generator, across its yields, so a bare `break` leaves it
    open in the caller's task until the event loop finalises the generator from another
    task (a CancelledError in the caller, "exit cancel scope in a different task"). The
    run would have to own a task outside the caller's structure to avoid that. The results
    are yielded, not written: a config with `workers`, `output`, `resume`, `summary`,
    `series`, `metrics_addr`, `dashboard` or `shard` is refused (a shard's share of the
    events is `run`'s: deliver sends every event it is given).

    Results are redacted as `run` writes its records. A run that stops itself (`run`'s
    exit 3) raises AuthError (the token) or FatalError once its results are yielded; an
    exception from `events` is raised as itself, after the results before it.
    """
    refused = [
        name
        for name, given in (
            ("workers", config.workers != 1),
            ("output", config.output is not None),
            ("resume", config.resume),
            ("summary", config.summary is not None),
            ("series", config.series is not None),
            ("metrics_addr", config.metrics_addr is not None),
            ("dashboard", config.dashboard is not None),
            ("shard", config.shard is not None),
        )
        if given
    ]
    if refused:
        raise ConfigError(
            f"deliver() yields results in this process; it cannot honour {', '.join(refused)} "
            "(use engine.run for a run that writes an output)"
        )
    config = config.with_changes(inputs=("<events>",)).validated()
    ended = _Ended()
    send, receive = anyio.create_memory_object_stream[Result](config.concurrency)
    # The producer never raises (what ends it is kept in `ended`), so this group never
    # cancels the caller's own code between two results; what ended it is raised after.
    async with anyio.create_task_group() as tg:
        tg.start_soon(_produce, _guarded(events, ended), config, send, ended)
        async with receive:
            async for result in receive:
                try:
                    yield result
                except GeneratorExit:  # the caller stopped early (aclose): end quietly
                    tg.cancel_scope.cancel()
                    return
    ended.raise_first()


@dataclass(slots=True)
class _Ended:
    """What ended a deliver() run early, raised once its results are yielded."""

    caller: Exception | None = None  # the caller's events iterator raised it
    error: Exception | None = None  # the run's own (EngineError as itself)
    stop: FatalError | None = None  # the run stopped itself: the rest were never sent

    def raise_first(self) -> None:
        if self.caller is not None:
            raise self.caller
        if self.error is not None:
            raise self.error
        if self.stop is not None:
            raise self.stop


async def _produce(
    events: Iterable[Mapping[str, object]] | AsyncIterator[Mapping[str, object]],
    config: Config,
    send: MemoryObjectSendStream[Result],
    ended: _Ended,
) -> None:
    """deliver()'s run: each result redacted as `run` writes it (RunSession.write),
    handed to `send`; a stop becomes the FatalError (AuthError) the caller gets."""
    async with send:
        try:
            with plain_engine_errors():
                async with open_run(config, output=False, inputs=False) as session:
                    secrets = session.secrets

                    async def emit(batch: list[Result]) -> None:
                        for result in batch:
                            await send.send(_redacted(result, secrets))

                    engine = session.engine()
                    feed = mapping_feed(events, event_defaults(session.config))
                    summary = await engine.execute(feed, emit)
                    if summary.stopped is not None:
                        ended.stop = _stop_error(summary, auth=engine.state.stop_auth)
        except Exception as exc:
            ended.error = exc


def _stop_error(summary: Summary, *, auth: bool) -> FatalError:
    kind = AuthError if auth else FatalError
    error = kind(
        f"stopped: {summary.stopped}; {summary.events} results were yielded: "
        "an event without one was not sent"
    )
    error.exit_code = summary.stop_code  # 3, or 70 for a streak of internal errors
    return error


def _guarded(
    events: Iterable[Mapping[str, object]] | AsyncIterator[Mapping[str, object]],
    ended: _Ended,
) -> Iterator[Mapping[str, object]] | AsyncIterator[Mapping[str, object]]:
    """`events`, ended where the caller's iterator raises: the events before it are
    answered and yielded, then deliver() raises the caller's exception as itself."""
    if isinstance(events, AsyncIterator):
        return _guarded_async(events, ended)
    return _guarded_sync(events, ended)


def _guarded_sync(events: Iterable[Mapping[str, object]], ended: _Ended) -> Iterator[Any]:
    try:
        yield from events
    except Exception as exc:
        ended.caller = exc


async def _guarded_async(
    events: AsyncIterator[Mapping[str, object]], ended: _Ended
) -> AsyncIterator[Any]:
    try:
        async for event in events:
            yield event
    except Exception as exc:
        ended.caller = exc


def _redacted(result: Result, secrets: Secrets) -> Result:
    """`result` as `run` would write it: every secret in it (a server may echo the token
    in its answer) [redacted] by the run's one redactor, field by field (the body as the
    bytes its record embeds); itself when no field held one. Never encoded whole to find
    out: that cost a `to_json()` per result, up to --max-response-bytes."""
    response = result.response
    if isinstance(response, orjson.Fragment):  # the body as sent, redacted as bytes
        body = orjson.dumps(response)  # the Fragment's own bytes, copied once
        kept = secrets.redact_bytes(body)
        if kept is not body and kept != body:
            response = orjson.Fragment(kept)
    elif isinstance(response, str):
        response = secrets.redact(response)
    changed: dict[str, Any] = {}
    if response is not result.response and response != result.response:
        changed["response"] = response
    for name in ("id", "source", "error"):
        text = getattr(result, name)
        if text is not None and (kept_text := secrets.redact(text)) != text:
            changed[name] = kept_text
    retries = tuple(secrets.redact(r) for r in result.retries)
    if retries != result.retries:
        changed["retries"] = retries
    return replace(result, **changed) if changed else result
