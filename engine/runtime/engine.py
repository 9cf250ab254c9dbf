"""The worker pool: one task group, bounded streams, orderly shutdown.

    feed --items--> N long-lived workers --results--> writer --batches--> emit (sink)

- The feed reads input in batches on a worker thread and queues each batch whole; every
  queue is bounded, so a slow server or a slow disk pushes back all the way to the
  reader and memory depends on the concurrency, never on the input size.
- Each worker holds one call in flight; `--rate` is enforced by one shared limiter
  whose bucket holds ~5 ms of traffic, so there is no burst at start.
- Unordered runs with a synchronous sink (`run`): each worker hands its record over the
  moment its call ends, and each loop tick's records are counted and written together,
  so a kill -9 loses at most --concurrency answers; the stop checks (below) see each
  record at once. Otherwise one writer task consumes the results: it updates the stats,
  restores input order when asked (a bounded window: the feed waits when it runs too far
  ahead of the oldest unanswered event) and hands complete batches to `emit`.
- A run that cannot go on (every call refused with 401, or the endpoint unreachable,
  before any success; every call throttled, or failing to connect, for --give-up-after
  seconds; 20 events in a row failed with an internal error: core/stops.py) stops
  reading and starts no new call; the calls in flight finish and are written.
- No call goes out without a usable token: when none comes within --token-wait (the
  provider raises AuthError) the run stops (exit 3) and halts; the events still to send
  are not written, so `--resume` sends them (`_token_lost`).
- An unexpected exception while handling one event (building its request, the call,
  the token, its record) is that event's record (error kind "internal"), never the
  run's end; cancellation and the engine's own errors (EngineError) pass through.
- Retries happen inside the worker that holds the event (engine/core/call.py decides), so
  the events waiting for a retry are bounded by the pool size; each retry takes a rate
  permit like a first attempt.
- SIGINT/SIGTERM (CLI runs only) halts: reading stops, no new call starts, calls in
  flight get `--grace` seconds to finish and are written; an event not answered by
  then is not written, so `--resume` sends it again. A second signal cancels at once.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
)
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial

import anyio
import orjson

from engine.config import Config
from engine.core.bulkstats import add_results
from engine.core.call import (
    AUTHORIZE,
    PERMIT,
    Backoff,
    CallFlow,
    Renew,
    Send,
    SlowDown,
)
from engine.core.events import Event, Invalid, Item, ReadCounts
from engine.core.proxies import refused_stop, unreachable_stop
from engine.core.query import RequestBuilder
from engine.core.rates import AdaptiveRate
from engine.core.records import ErrorKind, Result, dry_run, http_kind, internal, invalid
from engine.core.retry import THROTTLE_STATUSES, RetryPolicy, RetrySettings
from engine.core.secrets import Secrets
from engine.core.stats import RunStats, Summary, summarize
from engine.core.stops import EXIT_STOPPED, InternalStreak, OutageWatch, Stop, ThrottleWatch
from engine.core.urls import without_credentials
from engine.errors import AuthError, EngineError, first_engine_error
from engine.files.sinks import TickWriter
from engine.net.auth import TokenProvider
from engine.net.tls import tls_stop
from engine.net.transport import Transport
from engine.runtime.batches import BatchQueue, admit
from engine.runtime.display import show_live
from engine.runtime.feeds import READ_BATCH, Feed
from engine.runtime.limits import Limiter, in_hand, make_limiter
from engine.runtime.progress import RunFigures, RunView
from engine.runtime.shutdown import Shutdown
from engine.version import DEFAULT_USER_AGENT

Emit = Callable[[list[Result]], Awaitable[None]]


_UNAUTHORIZED = http_kind(401)
_FATAL_KINDS = (_UNAUTHORIZED, ErrorKind.CONNECT)


@dataclass(slots=True)
class _State:
    stats: RunStats = field(default_factory=RunStats)
    stopped: str | None = None
    stop_code: int = EXIT_STOPPED  # the exit code of `stopped`
    stop_auth: bool = False  # `stopped` by the token (deliver() raises AuthError)
    fatal_streak: int = 0
    first_fatal: str | None = None
    first_fatal_kind: str | None = None
    resumed: int = 0
    seen_ok: bool = False  # a record was ok (before `stats` counts it: `_watch`)

    def count_resumed(self, skipped: int) -> None:
        self.resumed += skipped


class Engine:
    """One run's moving parts; `execute` drives them in one task group.

    The package's other drivers build on it: `load/driver.py` (the open-model dispatcher
    feeds `process` and `write_results`), `multiproc/child.py` (one `--workers` process)
    and `distributed/actors.py` (a Ray sender); `RunSession.engine` (runtime/session.py)
    builds one for an open run.
    """

    def __init__(
        self,
        config: Config,
        tokens: TokenProvider,
        transport: Transport | None,
        *,
        limiter: Limiter | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.transport = transport
        self.builder = RequestBuilder(
            config.endpoint,
            user_agent=config.user_agent or DEFAULT_USER_AGENT,
            headers=config.extra_headers,  # --header; an event's own still win
        )
        self.limiter: Limiter | None = limiter if limiter is not None else make_limiter(config.rate)
        # The run's secrets (open_run gathers them); alone, this config's and the tokens'.
        self.secrets = secrets or Secrets(
            (config.token, config.client_secret),
            issued=tokens.secrets,
            basic=((config.client_id, config.client_secret),),
        )
        self.state = _State()
        self.window = anyio.Semaphore(max(1024, config.concurrency * 8)) if config.ordered else None
        self.fed: deque[int] = deque()  # seqs in feed order, for the ordered writer
        self.taken = 0  # items taken from the feed (the progress display's read-ahead)
        self.policy = RetryPolicy(
            RetrySettings(
                retries=config.retries,
                backoff_base=config.backoff_base,
                backoff_cap=config.backoff_cap,
                retry_after_cap=config.retry_after_cap,
                budget_ratio=config.retry_budget,
            ),
            rand=random.random,
        )
        self.adaptive = AdaptiveRate() if config.adaptive else None
        self.internals = InternalStreak(config.internal_streak, config.streak_share)
        self.throttle = ThrottleWatch(config.give_up_after, time.monotonic)
        endpoint = without_credentials(config.endpoint)
        self.outage = OutageWatch(config.give_up_after, time.monotonic, endpoint)
        self.calls = CallFlow(
            self.policy,
            adaptive=self.adaptive,
            secrets=self.secrets,
            clock=time.monotonic,
            wall_clock=time.time,
            throttle=self.throttle,
        )
        self.shutdown = Shutdown()
        self._tick: TickWriter | None = None

    # -- stages ---------------------------------------------------------------------

    # The stages meet in BatchQueues (runtime/batches.py), not anyio streams: an anyio
    # receive or send yields to the loop once (a checkpoint) and looks its task up, which
    # cost more than the call itself at tens of thousands of events per second.

    async def _feed(self, feed: Feed, queue: BatchQueue[Item]) -> None:
        """The feed's batches into `queue` whole (runtime/batches.py)."""
        try:
            with self.shutdown.feed_scope:
                async with aclosing(feed):
                    async for batch in feed:
                        self.taken += len(batch)
                        if self.state.stopped is not None:
                            return
                        if self.window is not None:
                            batch = await admit(batch, self.window, self.fed, queue)
                        await queue.put(batch)
        finally:
            queue.close()

    async def _workers(
        self, queue: BatchQueue[Item], results: BatchQueue[Result], count: int
    ) -> None:
        try:
            with self.shutdown.work_scope:
                async with anyio.create_task_group() as tg:
                    for _ in range(count):
                        tg.start_soon(self._work, queue, results)
        finally:
            results.close()  # the writer ends once it has what was answered

    async def _work(self, queue: BatchQueue[Item], results: BatchQueue[Result]) -> None:
        while True:
            item = queue.pop()
            if item is None and (item := await queue.get()) is None:
                return
            if self.shutdown.halted.is_set():
                return
            if self.state.stopped is not None:
                continue  # the run stopped itself: not sent, not written (--resume)
            result = await self.process(item)
            if result is None:
                continue
            if self._tick is not None:
                self._watch(result)  # counted by the tick's write (`_write_counted`)
                self._tick.add(result)
                continue
            if not results.offer(result):
                await results.put([result])

    async def process(self, item: Item) -> Result | None:
        """The record of one item; None when the run halted before it was answered.

        Drives core/call.py's flow: the decisions are there, the waiting and the I/O here.
        An unexpected exception is the item's record (error kind "internal").
        """
        try:
            if isinstance(item, Invalid):
                return invalid(item)
            transport = self.transport
            if transport is None:
                return self._dry_run(item)
            request = self.builder.build(item)
            flow = self.calls.start(item)
            answer = flow.send
            effect = next(flow)
            while True:
                # The two commonest effects are singletons, told apart by identity: a class
                # pattern for each cost 0.2 µs more per event (issue 11's benchmark).
                if effect is PERMIT:
                    limiter = self.limiter
                    if limiter is not None and not in_hand(limiter):
                        await self.shutdown.wait(limiter.acquire)  # ends when the run halts
                    effect = answer(not self.shutdown.halted.is_set())
                elif effect is AUTHORIZE:
                    authorization = self.tokens.authorization()
                    if authorization is None:  # the token is in its mandatory window
                        try:
                            authorization = await self.tokens.wait_authorization()
                        except AuthError as exc:  # no fresh token: not sent, not written
                            self._token_lost(str(exc))
                            return None
                    effect = answer(authorization)
                elif type(effect) is Send:  # every call, so also before the match
                    response = await transport.send(request, effect.authorization)
                    effect = answer(self.state.stats.count_io(request, response))  # bytes
                else:
                    match effect:
                        case Renew():
                            effect = answer(await self.tokens.refresh_after_401(effect.used))
                        case Backoff() | SlowDown():
                            effect = answer(await self.shutdown.pause(effect.seconds))
                        case _:  # a bug: an effect this driver does not know would spin
                            raise TypeError(f"unknown effect {effect!r}")
        except StopIteration as done:
            result: Result | None = done.value
            return result
        except Exception as exc:
            if isinstance(exc, EngineError) or (
                isinstance(exc, ExceptionGroup) and first_engine_error(exc) is not None
            ):
                raise  # the engine's own: the run ends as that error says
            return internal(item, exc, self.secrets)

    def _dry_run(self, event: Event) -> Result:
        authorized = self.tokens.authorization() is not None
        shown = self.builder.shown(self.builder.build(event), authorized=authorized)
        return dry_run(event, orjson.dumps(shown))

    async def write_results(self, results: BatchQueue[Result], emit: Emit) -> None:
        """Count and emit the records queued in `results` (in input order with
        --ordered) until it is closed and empty."""
        pending: dict[int, Result] = {}
        while True:
            first = results.pop()
            if first is None and (first := await results.get()) is None:
                break
            batch = [first, *results.take(511)]
            self._account(batch)
            if self.window is None:
                await emit(batch)
                continue
            for result in batch:
                pending[result.seq] = result
            ready = []
            fed = self.fed
            while fed and fed[0] in pending:
                ready.append(pending.pop(fed.popleft()))
            if ready:
                await emit(ready)
                self.window.release()
                for _ in range(len(ready) - 1):
                    self.window.release()
        if pending:  # only when a run stopped early: keep what was answered
            await emit([pending[k] for k in sorted(pending)])

    def _account(self, batch: list[Result]) -> None:
        """Count `batch` (in bulk) and watch each record for a reason to stop."""
        add_results(self.state.stats, batch)
        for result in batch:
            self._watch(result)

    def _watch(self, result: Result) -> None:
        """The stops one record may cause (core/stops.py), at once: the counters follow
        with its batch, so "no success yet" is `seen_ok`, not the count of oks."""
        state = self.state
        outage = self.outage.add(result.status, result.error_kind, result.error)
        if result.ok:
            state.seen_ok = True
            state.fatal_streak = 0
            state.first_fatal = None
            if self.internals.count:
                self.internals.add(None, None)  # the streak is broken
            return
        stop = self.internals.add(result.error_kind, result.error) or outage
        if stop is None and result.status in THROTTLE_STATUSES:
            stop = self.throttle.final(result.status)
        if stop is None and result.error_kind == ErrorKind.TLS:  # no retry will help
            stop = Stop(tls_stop(result.error, without_credentials(self.config.endpoint)))
        if stop is None and result.error_kind == ErrorKind.PROXY:  # refused: stop at once
            stop = Stop(refused_stop(result.error))
        if stop is not None:
            self.stop(stop)
        elif result.error_kind in _FATAL_KINDS and not state.seen_ok:
            state.fatal_streak += 1
            if state.first_fatal is None:
                state.first_fatal, state.first_fatal_kind = result.error, result.error_kind
            if state.fatal_streak >= self.config.fail_fast_401:
                auth = state.first_fatal_kind == _UNAUTHORIZED
                self.stop(Stop(self._fatal_message(), auth=auth))

    def stop(self, stop: Stop) -> None:
        """The run stops itself (the first stop is the run's): no input is read, no call
        starts (nor one waiting for a permit); the calls in flight end and are written."""
        state = self.state
        if state.stopped is None:
            # Redacted here, whoever wrote it: a reason may quote a server (the token
            # endpoint's answer), and it reaches stderr and the summary.
            state.stopped, state.stop_code = self.secrets.redact(stop.reason), stop.exit_code
            state.stop_auth = stop.auth
            self.shutdown.feed_scope.cancel()
        self.shutdown.end_waits()

    def _fatal_message(self) -> str:
        state = self.state
        if state.first_fatal_kind == _UNAUTHORIZED:
            return (
                "the delivery host refused the token (HTTP 401): check --token or "
                "ADBATCH_TOKEN, or the client credentials"
            )
        return unreachable_stop(state.first_fatal) or (
            f"cannot reach the delivery endpoint {without_credentials(self.config.endpoint)} "
            f"({state.first_fatal}); check --endpoint and that the server is up"
        )

    # -- the run ----------------------------------------------------------------------

    async def execute(
        self,
        feed: Feed,
        emit: Emit,
        counts: ReadCounts | None = None,
        *,
        handle_signals: bool = False,
        write_now: Callable[[list[Result]], None] | None = None,
    ) -> Summary:
        """Drive the run. With `write_now` (a synchronous sink) and no `--ordered`, each
        worker hands its record over the moment its call ends and the records of one
        event-loop tick go out in one write at the end of that tick: nothing waits in a
        buffer across ticks, so a kill -9 loses at most --concurrency answers and
        --resume repeats at most that many calls."""
        start = time.perf_counter()
        tick = self._tick = (
            TickWriter(partial(self._write_counted, write_now))
            if write_now is not None and self.window is None
            else None
        )
        capacity = max(16, self.config.concurrency * 2)
        items = BatchQueue[Item](max(READ_BATCH, capacity))
        results = BatchQueue[Result](capacity)
        workers = 1 if self.transport is None else self.config.concurrency
        async with anyio.create_task_group() as tg:
            if self.config.progress:
                tg.start_soon(show_live, self._progress_view(counts))
            if handle_signals:
                tg.start_soon(self.shutdown.watch_signals, tg, self.config.grace)
            tg.start_soon(self.keep_tokens)
            try:
                async with anyio.create_task_group() as pipeline:
                    pipeline.start_soon(self._feed, feed, items)
                    pipeline.start_soon(self._workers, items, results, workers)
                    pipeline.start_soon(self.write_results, results, emit)
            finally:
                if tick is not None:
                    tick.close()
            tg.cancel_scope.cancel()
        state = self.state
        stats = state.stats
        sent = stats.events - stats.invalid
        if state.stopped is None and sent > 0 and stats.ok == 0 and state.fatal_streak == sent:
            state.stopped = self._fatal_message()
            state.stop_auth = state.first_fatal_kind == _UNAUTHORIZED
        if counts is not None:
            stats.blank_lines = counts.blank_lines
        return summarize(
            stats,
            elapsed_s=time.perf_counter() - start,
            stopped=self.shutdown.reason or state.stopped,
            stop_code=EXIT_STOPPED if self.shutdown.reason else state.stop_code,
            retry_budget_refused=self.policy.budget.refused,
            slowed=None if self.adaptive is None else self.adaptive.summary(time.monotonic()),
            interrupted=self.shutdown.interrupted,
            resumed=state.resumed,
            tokens=self.tokens.token_stats(),
        )

    def _write_counted(self, write: Callable[[list[Result]], None], batch: list[Result]) -> None:
        add_results(self.state.stats, batch)  # the tick's records, watched one by one
        write(batch)

    async def keep_tokens(self) -> None:
        """The token renewer; when it gives up, the run stops (`_token_lost`)."""
        try:
            await self.tokens.maintain()
        except AuthError as exc:
            self._token_lost(str(exc))

    def _token_lost(self, reason: str) -> None:
        """No usable token will come: the run stops (exit 3) and starts no call; the calls
        in flight end and are written, those still to send (waiting for a token, a permit
        or a backoff) are not, so --resume sends them."""
        self.stop(Stop(reason, auth=True))  # halted too: backoffs and permits end at once

    def _progress_view(self, counts: ReadCounts | None) -> RunView:
        return RunView.of_inputs(self._progress_figures, counts, self.config.inputs)

    def _progress_figures(self) -> RunFigures:
        stats = self.state.stats
        p99 = stats.latency.percentile(99)
        return RunFigures(stats.events, self.taken, stats.ok, stats.failed, stats.invalid, p99)
