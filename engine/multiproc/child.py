"""One worker process of a `--workers N` run (the parent is engine/multiproc/parent.py).

Rules:
- The worker runs the ordinary engine (`runtime.engine.Engine`) on its own event loop
  (uvloop when installed) with its own connection pool; its input is the parent's
  batches of unparsed records.
- Its output: when the run's output is a regular file and unordered, the worker appends
  its records to that file itself (O_APPEND: every write lands whole at the end, never
  inside another worker's line), the records of one loop tick in one write, and tells
  the parent only how many it answered (`Answered`). Otherwise (stdout, a pipe,
  `--ordered`) it sends the encoded JSONL lines to the parent, the one writer.
- The process starts before the run's configuration is known (forked early, before any
  socket or thread exists, when that is safe) and waits for `Start`; a closed pipe
  before that means "nothing to do".
- The messages are engine/multiproc/messages.py's. The worker listens until it has sent
  `Done`, so token answers still arrive after the last batch.
- Signals: the worker ignores SIGINT and SIGTERM (the parent decides and sends `Halt`).
- A worker dies with its parent and writes nothing after it: a parent that is gone
  (kill -9) must not have workers appending late records to an output a `--resume` is
  already reading (their events twice in the file, their calls sent twice). On Linux the
  kernel kills the worker (PR_SET_PDEATHSIG); elsewhere, and as a backstop, the pipe
  ending before `Done` stops it at once: no new calls, and those in flight are cut off
  and never written. They are lost, as a 1-process run's calls in flight are after its
  kill -9, and `--resume` sends them.
- The worker never sees client credentials: its `FollowerToken` holds what the parent
  pushed, and asks the parent (the run's one token broker) after a 401.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from multiprocessing.connection import Connection

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.core.events import EventDefaults, Item
from engine.core.kept import token_keep
from engine.core.records import Result, jsonl, jsonl_parts
from engine.core.secrets import Secrets
from engine.core.tally import Tally, record_schedule, tally_of
from engine.errors import EngineError, OutputError, first_engine_error
from engine.files.sinks import JsonlSink, kept
from engine.files.spans import Span, span_items
from engine.multiproc.messages import (
    Answered,
    Done,
    End,
    Failed,
    Halt,
    LiveFigures,
    Ordered,
    Parcel,
    Records,
    Refresh,
    Refreshed,
    Start,
    Token,
    ToParent,
    Units,
    WorkerJob,
)
from engine.multiproc.pipes import PipeReader, PipeWriter
from engine.net.auth import FollowerToken, Lease
from engine.runtime.engine import Engine
from engine.runtime.feeds import READ_BATCH, event_defaults, thread_batches
from engine.runtime.limits import make_limiter
from engine.runtime.loop import run_loop
from engine.runtime.session import transport_for
from engine.runtime.watch import count_in_flight

_Go = Callable[..., Awaitable[object]]  # (emit, *, write_now) -> the job's extra
_REPORT_S = 0.02  # how often a worker that writes the output itself reports its count
_LIVE_S = 0.5  # how often a watched run's worker sends its figures (LiveFigures)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_NO_LEASE = Lease(None, 0.0)  # no header now: wait for the parent's next push


class Answers:
    """The parent's answers to `Refresh`, by the refused value asked about.

    Subtleness: the waiter is registered before the question goes out. The listener may
    hear the answer before the asking task runs again, and an answer that found no
    waiter would leave the asker waiting for good.
    """

    def __init__(self) -> None:
        self._waiting: dict[str | None, anyio.Event] = {}
        self._answers: dict[str | None, tuple[bool, Lease]] = {}

    async def ask(
        self, used: str | None, send: Callable[[], Awaitable[None]]
    ) -> tuple[bool, Lease]:
        """Send the question (`send`) about `used`, then wait for its answer."""
        event = self._waiting.setdefault(used, anyio.Event())
        await send()
        await event.wait()
        return self._answers.pop(used, (False, _NO_LEASE))

    def give(self, message: Refreshed) -> None:
        self._answers[message.used] = (message.ok, message.lease)
        event = self._waiting.pop(message.used, None)
        if event is not None:
            event.set()


class _Worker:
    """The worker's side of the pipe and its engine."""

    def __init__(self, start: Start, conn: Connection) -> None:
        self.config = start.config
        self.start = start
        self.conn = conn
        self.lock = anyio.Lock()
        self.writer = PipeWriter(conn, name="adbatch-to-parent")
        self.parent_gone = False
        self.answers = Answers()
        keep = token_keep(start.config.timeout, ordered=start.config.ordered)  # core/kept.py
        self.tokens = FollowerToken(start.lease, self._ask, wait=start.config.token_wait, keep=keep)
        self.engine: Engine | None = None
        self.tg: anyio.abc.TaskGroup | None = None
        self.sink = (  # the parent watches the output for deletion (it owns it)
            JsonlSink(start.output, append=True, watch=False) if start.output is not None else None
        )
        self.unreported = 0
        self.live_sent = Tally()  # the figures sent so far (LiveFigures carries deltas)
        # A watched job (load, replay): its scheduled calls, lag and latency from the
        # schedule, counted from the records as they are emitted.
        self.schedule = Tally() if start.live and start.job is not None else None
        self.in_flight: Callable[[], int] = lambda: 0

    # -- the pipe

    async def send(self, message: ToParent) -> None:
        if self.parent_gone:
            return
        async with self.lock:
            try:
                await self.writer.send(message)
            except OSError:  # the parent was killed
                self.orphaned()

    async def _ask(self, used: str | None) -> tuple[bool, Lease]:
        return await self.answers.ask(used, partial(self.send, Refresh(used)))

    def orphaned(self) -> None:
        """The parent is gone: stop at once and write nothing more (the module's rules)."""
        self.parent_gone = True
        if self.tg is not None:
            self.tg.cancel_scope.cancel()

    def halt(self, reason: str, grace: float) -> None:
        if self.engine is None or self.tg is None:
            return
        self.engine.shutdown.halt(reason)
        self.engine.shutdown.cut_off_after(self.tg, grace)

    async def listen(self, parcels: MemoryObjectSendStream[Parcel]) -> None:
        """Until this worker has reported: token answers still come after the last parcel
        of input (`Units` or `Span`, multiproc/parcels.py)."""
        async with parcels:
            messages = PipeReader(self.conn, name="adbatch-parent")
            while True:
                try:
                    message = await messages.recv()
                except (EOFError, OSError):
                    # The parent is gone (killed: a normal end closes the pipe only after
                    # Done, a failed one when it gives up on the run).
                    self.orphaned()
                    return
                match message:
                    case Units() | Span():
                        with contextlib.suppress(anyio.BrokenResourceError):
                            parcels.send_nowait(message)  # (broken: this worker stopped early)
                    case Token(lease):
                        self.tokens.set(lease)
                    case Refreshed():
                        self.answers.give(message)
                    case End():
                        parcels.close()  # the feed ends; the calls in flight go on
                    case Halt(reason, grace):  # the parent was interrupted
                        self.halt(reason, grace)

    # -- records

    def _redact(self, data: bytes) -> bytes:  # a server that echoes the token must not leak it
        assert self.engine is not None  # records exist only once the engine runs
        return self.engine.secrets.redact_bytes(data)

    async def emit(self, batch: list[Result]) -> None:
        if self.schedule is not None:
            record_schedule(self.schedule, batch)
        if self.start.ordered:
            lines = [(r.seq, self._redact(jsonl([r]))) for r in batch]
            await self.send(Ordered(lines, len(batch)))
        else:
            kept_ = kept(batch, self.config.records)  # --records errors|none (load, replay)
            await self.send(Records(self._redact(jsonl(kept_)) if kept_ else b"", len(batch)))

    def write(self, batch: list[Result]) -> None:
        assert self.sink is not None
        if self.parent_gone:  # a --resume may be reading the output already
            return
        if self.schedule is not None:
            record_schedule(self.schedule, batch)
        for part in jsonl_parts(kept(batch, self.config.records)):  # big answers: one by one
            self.sink.write(self._redact(part))
        self.unreported += len(batch)

    async def report(self) -> None:
        while True:
            await anyio.sleep(_REPORT_S)
            await self._report_now()

    async def _report_now(self) -> None:
        if self.unreported:
            count, self.unreported = self.unreported, 0
            await self.send(Answered(count))

    async def report_live(self) -> None:
        while True:
            await anyio.sleep(_LIVE_S)
            await self._send_live()

    async def _send_live(self) -> None:
        """What was counted since the last report: a copy of the counters, once per
        report, never a hook on each call."""
        if not self.start.live or self.engine is None:
            return
        stats, schedule = self.engine.state.stats, self.schedule
        now = (
            tally_of(stats)
            if schedule is None
            else tally_of(
                stats,
                corrected=schedule.corrected,
                lag=schedule.lag,
                scheduled=schedule.scheduled,
                events_read=schedule.scheduled + stats.invalid,
            )
        )
        delta, self.live_sent = now.minus(self.live_sent), now
        await self.send(LiveFigures(delta, self.in_flight(), self.tokens.waits))

    # -- the run

    async def run(self) -> None:
        config = self.config
        # Unbounded, yet bounded by the parent's credit: it never sends more than that.
        parcels_send, parcels_receive = anyio.create_memory_object_stream[Parcel](math.inf)
        async with transport_for(config) as transport:
            # It writes records itself (direct output): it redacts what the parent would.
            secrets = Secrets(self.start.secrets, issued=self.tokens.secrets)
            start = self.start  # --rate: its share's limiter, phased among the workers'
            limiter = make_limiter(config.rate, origin=start.origin, phase=start.phase)
            engine = Engine(config, self.tokens, transport, secrets=secrets, limiter=limiter)
            self.engine = engine
            if self.start.live:
                self.in_flight = count_in_flight(engine)
            async with anyio.create_task_group() as tg:
                self.tg = tg
                tg.start_soon(self.listen, parcels_send)
                if self.start.live:
                    tg.start_soon(self.report_live)
                job = self.start.job
                if job is None:
                    defaults = event_defaults(config)
                    feed = _parcel_feed(parcels_receive, defaults, config.max_line_bytes)
                    extra = await self._execute(partial(engine.execute, feed))
                else:  # its own share of a schedule (load, replay): no parcels come
                    extra = await self._execute(partial(_run_job, job, engine))
                await self._send_live()  # the last figures, before Done
                slowed = (
                    None if engine.adaptive is None else engine.adaptive.summary(time.monotonic())
                )
                state = engine.state
                await self.send(
                    Done(
                        state.stats,
                        state.stopped,
                        engine.policy.budget.refused,
                        slowed,
                        state.stop_code,
                        None if job is None else extra,
                        self.tokens.waits,
                    )
                )
                # Nothing more to wait for: not the parent's next message, not a --grace
                # timer still pending after an interrupted run ended early.
                tg.cancel_scope.cancel()

    async def _execute(self, go: _Go) -> object:
        """`go(emit, write_now)` with this worker's way of writing records."""
        if self.sink is None:
            return await go(self.emit, write_now=None)
        async with anyio.create_task_group() as reporting:
            reporting.start_soon(self.report)
            try:
                extra = await go(self.emit, write_now=self.write)
            finally:
                self.sink.close()  # fsynced before the parent hears Done
            reporting.cancel_scope.cancel()
        await self._report_now()
        return extra


async def _run_job(
    job: WorkerJob,
    engine: Engine,
    emit: Callable[[list[Result]], Awaitable[None]],
    *,
    write_now: Callable[[list[Result]], None] | None,
) -> object:
    """A job writes its records as `execute` does: itself into the output when it may."""
    if write_now is not None:
        write = write_now

        async def emit_now(batch: list[Result]) -> None:
            write(batch)

        emit = emit_now
    return await job.run(engine, emit)


async def _parcel_feed(
    receive: MemoryObjectReceiveStream[Parcel], defaults: EventDefaults, max_line_bytes: int
) -> AsyncGenerator[list[Item], None]:
    """The parent's records: Units as they came, a Span read here (a local file, so in
    this thread: runtime/feeds.py)."""
    async with receive:
        async for parcel in receive:
            if isinstance(parcel, Units):
                yield parcel.items(defaults)
                continue
            items = span_items(parcel, defaults, max_line_bytes=max_line_bytes)
            batches = thread_batches(items, READ_BATCH, inline=True)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    yield batch


async def _work(start: Start, conn: Connection) -> None:
    await _Worker(start, conn).run()


def _die_with_parent(parent: int | None) -> bool:
    """Have the kernel SIGKILL this process when its parent dies (Linux); False when
    the parent (pid `parent`) is gone already.

    Subtleness: the parent may die between the fork and the prctl, and then no signal
    ever comes; the worker has been reparented by then, which getppid() shows. The
    signal follows the parent's thread that started the worker: the run's loop thread,
    which joins the workers before it ends."""
    if sys.platform.startswith("linux"):
        import ctypes  # imported by every worker anyway (runtime/malloc.py)

        with contextlib.suppress(OSError, AttributeError):
            args = (_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # unsigned longs
            ctypes.CDLL(None, use_errno=True).prctl(*map(ctypes.c_ulong, args))
    return parent is None or os.getppid() == parent


def worker_main(
    index: int, conn: Connection, inherited: tuple[int, ...] = (), parent: int | None = None
) -> None:
    """A worker process: waits for its share of the run, then runs it on its own event
    loop (uvloop when installed) until the parent ends it.

    `inherited`: the parent's ends of the pipes a forked worker got a copy of (its own
    and the earlier workers'); closed first, so each pipe ends when the parent closes it.
    `parent`: the parent's pid; the worker dies with it (the module's rules).
    """
    if not _die_with_parent(parent):
        conn.close()
        return
    # Ctrl-C reaches the whole process group: the parent decides (it halts the workers
    # with --grace).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        start = conn.recv()
    except (EOFError, OSError, KeyboardInterrupt):
        conn.close()
        return  # the run ended (or failed) before it needed this worker
    try:
        # A forked worker starts inside the parent's running task: a fresh context, so
        # nothing of the parent's loop (sniffio's "asyncio is running") is seen here.
        contextvars.Context().run(run_loop, _work, start, conn)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # reported to the parent, which fails the run with it
        with contextlib.suppress(OSError):
            conn.send(_failed(index, exc))
    finally:
        conn.close()


def _failed(index: int, exc: BaseException) -> Failed:
    """What the parent is told of the exception a worker ended with: an engine error (in
    the task groups' wrapping) as its own message; anything else with its type."""
    error = first_engine_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
    if isinstance(error, OutputError):
        return Failed(f"worker {index}: {error}", output=True, kept=error.kept)
    if isinstance(error, EngineError):
        return Failed(f"worker {index}: {error}")
    return Failed(f"worker {index}: {type(exc).__name__}: {exc}")
