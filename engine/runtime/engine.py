"""The worker pool: one task group, bounded streams, orderly shutdown.

    feed --items--> N long-lived workers --results--> writer --batches--> emit (sink)

- The feed reads input in batches on a worker thread; every stream is bounded, so a
  slow server or a slow disk pushes back all the way to the reader and memory depends
  on the concurrency, never on the input size.
- Each worker holds one call in flight; `--rate` is enforced by one shared limiter
  whose bucket holds ~5 ms of traffic, so there is no burst at start.
- Unordered runs with a synchronous sink (`run`): each worker accounts for and writes
  its record the moment its call ends, so a kill -9 loses at most --concurrency answers.
  Otherwise one writer task consumes the results: it updates the stats, restores input
  order when asked (a bounded window: the feed waits when it runs too far ahead of the
  oldest unanswered event) and hands complete batches to `emit`.
- A run that cannot go on (every call refused with 401, or the endpoint unreachable,
  before any success) stops reading; the calls in flight finish and are written.
- Retries happen inside the worker that holds the event (engine/core/retry.py decides), so
  the events waiting for a retry are bounded by the pool size; each retry takes a rate
  permit like a first attempt.
- SIGINT/SIGTERM (CLI runs only) halts: reading stops, no new call starts, calls in
  flight get `--grace` seconds to finish and are written; an event not answered by
  then is not written, so `--resume` sends it again. A second signal cancels at once.
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
)
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.config import Config
from engine.core.events import Event, Invalid, Item, ReadCounts
from engine.core.query import RequestBuilder
from engine.core.records import (
    Result,
    answered,
    dry_run,
    invalid,
)
from engine.core.retry import (
    THROTTLE_STATUSES,
    AdaptiveRate,
    RetryPolicy,
    RetrySettings,
    retry_reason,
)
from engine.core.secrets import MIN_SECRET_LENGTH, Secrets
from engine.core.stats import RunStats, Summary, summarize
from engine.errors import AuthError
from engine.files.sinks import ResumeIndex, TickWriter
from engine.net.auth import TokenProvider
from engine.net.token_client import open_token_provider
from engine.net.transport import Transport, open_transport
from engine.runtime.feeds import Feed
from engine.runtime.limits import Limiter, make_limiter
from engine.runtime.shutdown import Shutdown
from engine.version import DEFAULT_USER_AGENT

Emit = Callable[[list[Result]], Awaitable[None]]


_FATAL_KINDS = ("http_401", "connect")


@dataclass(slots=True)
class _State:
    stats: RunStats = field(default_factory=RunStats)
    stopped: str | None = None
    fatal_streak: int = 0
    first_fatal: str | None = None
    first_fatal_kind: str | None = None
    resumed: int = 0


class Engine:
    """One run's moving parts; `execute` drives them in one task group.

    The package's other drivers build on it: `load.py` (the open-model dispatcher feeds
    `process` and `write_results`), `worker_proc.py` (one `--workers` process) and
    `distributed/actors.py` (a Ray sender); `_open` builds one for a config.
    """

    def __init__(
        self,
        config: Config,
        tokens: TokenProvider,
        transport: Transport | None,
        *,
        limiter: Limiter | None = None,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.transport = transport
        self.builder = RequestBuilder(
            config.endpoint, user_agent=config.user_agent or DEFAULT_USER_AGENT
        )
        self.limiter: Limiter | None = limiter if limiter is not None else make_limiter(config.rate)
        self.secrets = Secrets((config.token, config.client_secret), issued=tokens.secrets)
        self.state = _State()
        self.window = anyio.Semaphore(max(1024, config.concurrency * 8)) if config.ordered else None
        self.fed: deque[int] = deque()  # seqs in feed order, for the ordered writer
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
        self.shutdown = Shutdown()
        self._tick: TickWriter | None = None

    # -- stages ---------------------------------------------------------------------

    # The per-event stream operations try the `*_nowait` form first: anyio's awaiting
    # forms always yield to the loop once (a checkpoint), which costs more than the call
    # itself at tens of thousands of events per second. They still wait when they must.

    async def _feed(self, feed: Feed, send: MemoryObjectSendStream[Item]) -> None:
        with self.shutdown.feed_scope:
            async with send, aclosing(feed):
                async for batch in feed:
                    for item in batch:
                        if self.state.stopped is not None:
                            return
                        if self.window is not None:
                            try:
                                self.window.acquire_nowait()
                            except anyio.WouldBlock:
                                await self.window.acquire()
                            self.fed.append(item.seq)
                        try:
                            send.send_nowait(item)
                        except anyio.WouldBlock:
                            await send.send(item)

    async def _workers(
        self,
        receive: MemoryObjectReceiveStream[Item],
        send: MemoryObjectSendStream[Result],
        count: int,
    ) -> None:
        with self.shutdown.work_scope:
            async with receive, send, anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(self._work, receive.clone(), send.clone())

    async def _work(
        self, receive: MemoryObjectReceiveStream[Item], send: MemoryObjectSendStream[Result]
    ) -> None:
        async with receive, send:
            while True:
                try:
                    item = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                if self.shutdown.halted.is_set():
                    return
                result = await self.process(item)
                if result is None:
                    continue
                if self._tick is not None:
                    self._account(result)
                    self._tick.add(result)
                    continue
                try:
                    send.send_nowait(result)
                except anyio.WouldBlock:
                    await send.send(result)

    async def process(self, item: Item) -> Result | None:
        """The record of one item; None when the run halted before it was answered."""
        if isinstance(item, Invalid):
            return invalid(item)
        if self.transport is None:
            return self._dry_run(item)
        request = self.builder.build(item)
        attempts = 0
        reasons: list[str] = []
        refreshed = False
        while True:
            if not await self._permit():
                return None
            if attempts == 0:
                self.policy.budget.on_first_attempt()
            authorization = self.tokens.authorization()
            if authorization is None:  # the token is in its mandatory window
                authorization = await self.tokens.wait_authorization()
            response = await self.transport.send(request, authorization)
            attempts += 1
            if (
                response.status == 401
                and not refreshed
                and await self.tokens.refresh_after_401(authorization)
            ):
                refreshed = True
                reasons.append("http_401")
                continue
            reason = retry_reason(response.status, response.error_kind)
            note = None
            if reason is not None:
                if response.status in THROTTLE_STATUSES and self.adaptive is not None:
                    self.adaptive.on_throttle(time.monotonic())
                done = len(reasons) - refreshed
                decision = self.policy.decide(done, response.retry_after, now=time.time())
                if decision.final is None:
                    reasons.append(reason)
                    if not await self.shutdown.pause(decision.wait):
                        return None
                    continue
                note = decision.final
            return answered(
                item, response, attempts, self.secrets, retries=tuple(reasons), note=note
            )

    async def _permit(self) -> bool:
        """Wait for the right to start a call (adaptive limit, then --rate); False on halt."""
        if self.adaptive is not None:
            wait = self.adaptive.reserve(time.monotonic())
            if wait > 0 and not await self.shutdown.pause(wait):
                return False
        if self.limiter is not None:
            await self.limiter.acquire()
        if self.shutdown.halted.is_set():
            return False
        if self.adaptive is not None:
            self.adaptive.on_send(time.monotonic())
        return True

    def _dry_run(self, event: Event) -> Result:
        request = self.builder.build(event)
        headers = dict(request.headers)
        if self.tokens.authorization() is not None:
            headers["Authorization"] = "Bearer [redacted]"
        return dry_run(event, orjson.dumps({"url": request.url, "headers": headers}))

    async def write_results(self, receive: MemoryObjectReceiveStream[Result], emit: Emit) -> None:
        pending: dict[int, Result] = {}
        async with receive:
            async for first in receive:
                batch = [first]
                while len(batch) < 512:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                for result in batch:
                    self._account(result)
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

    def _account(self, result: Result) -> None:
        state = self.state
        for reason in result.retries:
            state.stats.retries[reason] += 1
        state.stats.add(
            status=result.status,
            ok=result.ok,
            invalid=result.error_kind == "invalid",
            latency_ms=result.latency_ms,
            error_kind=result.error_kind,
        )
        if result.ok:
            state.fatal_streak = 0
            state.first_fatal = None
        elif result.error_kind in _FATAL_KINDS and state.stats.ok == 0:
            state.fatal_streak += 1
            if state.first_fatal is None:
                state.first_fatal, state.first_fatal_kind = result.error, result.error_kind
            if state.fatal_streak >= self.config.fail_fast_401 and state.stopped is None:
                state.stopped = self._fatal_message()

    def _fatal_message(self) -> str:
        state = self.state
        if state.first_fatal_kind == "http_401":
            return (
                "the delivery host refused the token (HTTP 401): check --token or "
                "ADBATCH_TOKEN, or the client credentials"
            )
        return (
            f"cannot reach the delivery endpoint {self.config.endpoint} "
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
            TickWriter(write_now) if write_now is not None and self.window is None else None
        )
        capacity = max(16, self.config.concurrency * 2)
        items_send, items_receive = anyio.create_memory_object_stream[Item](capacity)
        results_send, results_receive = anyio.create_memory_object_stream[Result](capacity)
        workers = 1 if self.transport is None else self.config.concurrency
        async with anyio.create_task_group() as tg:
            if self.config.progress:
                tg.start_soon(self._progress, start)
            if handle_signals:
                tg.start_soon(self.shutdown.watch_signals, tg, self.config.grace)
            tg.start_soon(self.keep_tokens)
            try:
                async with anyio.create_task_group() as pipeline:
                    pipeline.start_soon(self._feed, feed, items_send)
                    pipeline.start_soon(self._workers, items_receive, results_send, workers)
                    pipeline.start_soon(self.write_results, results_receive, emit)
            finally:
                if tick is not None:
                    tick.close()
            tg.cancel_scope.cancel()
        state = self.state
        stats = state.stats
        sent = stats.events - stats.invalid
        if state.stopped is None and sent > 0 and stats.ok == 0 and state.fatal_streak == sent:
            state.stopped = self._fatal_message()
        if counts is not None:
            stats.blank_lines = counts.blank_lines
        if self.config.progress:
            sys.stderr.write("\r\x1b[2K")
        return summarize(
            stats,
            elapsed_s=time.perf_counter() - start,
            stopped=self.shutdown.reason or state.stopped,
            retry_budget_refused=self.policy.budget.refused,
            slowed=None if self.adaptive is None else self.adaptive.summary(time.monotonic()),
            interrupted=self.shutdown.interrupted,
            resumed=state.resumed,
            tokens=self.tokens.token_stats(),
        )

    async def keep_tokens(self) -> None:
        """The token renewer; when it gives up, the run stops as after a fatal streak."""
        try:
            await self.tokens.maintain()
        except AuthError as exc:
            if self.state.stopped is None:
                self.state.stopped = str(exc)

    async def _progress(self, start: float) -> None:
        stats = self.state.stats
        while True:
            await anyio.sleep(0.5)
            elapsed = time.perf_counter() - start
            p99 = stats.latency.percentile(99)
            p99_text = "-" if p99 is None else f"{p99:.0f} ms"
            sys.stderr.write(
                f"\r\x1b[2Kadbatch: {stats.events} done, {stats.events / elapsed:.0f}/s, "
                f"{stats.ok} ok, {stats.failed} failed, {stats.invalid} invalid, p99 {p99_text}"
            )
            sys.stderr.flush()


# -- resume ------------------------------------------------------------------------------


async def _skip_answered(feed: Feed, index: ResumeIndex, state: _State) -> Feed:
    """`feed` without the events the output already answers (counted in `state`)."""
    async with aclosing(feed):
        async for batch in feed:
            kept = [item for item in batch if not index.answered(item.seq, item.source, item.id)]
            state.resumed += len(batch) - len(kept)
            if kept:
                yield kept


# -- entry points -----------------------------------------------------------------------


async def start_mock(config: Config, stack: AsyncExitStack) -> Config:
    """Start the embedded mock on `stack`; `config` pointed at it, with its OAuth client
    (so `--mock` exercises dynamic tokens)."""
    from engine.mock import running_mock  # the mock's server side loads only when asked

    handle = await stack.enter_async_context(running_mock())
    client_id, client_secret = handle.config.clients[0]
    return config.with_changes(
        endpoint=handle.delivery_url,
        token=None,
        token_url=handle.token_url,
        client_id=client_id,
        client_secret=client_secret,
        mock=False,
    )


async def _open(config: Config, stack: AsyncExitStack) -> Engine:
    """Start what the run needs (embedded mock, HTTP session) on `stack`."""
    if config.mock:
        config = await start_mock(config, stack)
    tokens = await open_token_provider(config, stack)
    transport: Transport | None = None
    if not config.dry_run:
        transport = await stack.enter_async_context(
            open_transport(
                concurrency=config.concurrency,
                timeout=config.timeout,
                client=config.http_client,
            )
        )
    return Engine(config, tokens, transport)


def redact_output(data: bytes, secrets: tuple[bytes, ...], engine: Engine | None) -> bytes:
    """`data` without `secrets` and the tokens handed out so far (a server may echo them)."""
    issued = () if engine is None else engine.tokens.secrets()
    tokens = tuple(t.encode() for t in issued if len(t) >= MIN_SECRET_LENGTH)
    for secret in secrets + tokens:
        if secret in data:
            data = data.replace(secret, b"[redacted]")
    return data
