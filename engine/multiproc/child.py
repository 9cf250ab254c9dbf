"""One worker process of a `--workers N` run (the parent is engine/multiproc/parent.py).

Rules:
- The worker runs the ordinary engine (`runner.Engine`) on its own event loop (uvloop
  when installed) with its own connection pool; its input is the parent's batches of
  unparsed records.
- Its output: when the run's output is a regular file and unordered, the worker appends
  its records to that file itself (O_APPEND: every write lands whole at the end, never
  inside another worker's line), the records of one loop tick in one write, and tells
  the parent only how many it answered. Otherwise (stdout, a pipe, `--ordered`) it sends
  the encoded JSONL lines to the parent, the one writer.
- The process starts before the run's configuration is known (forked early, before any
  socket or thread exists, when that is safe) and waits for ("start", config, header,
  ordered, output); a closed pipe before that means "nothing to do".
- Messages from the parent: ("units", batch), ("token", header), ("refreshed", used,
  ok, header), ("halt", reason, grace) (the run was interrupted), ("end",); to the
  parent: ("answered", n), ("records", bytes, n) or ("ordered", [(seq, line)], n),
  ("refresh", used), ("done", stats, stopped, budget_refused, slowed), ("error", text,
  exit_code). The worker listens until it has sent "done", so token answers still
  arrive after the last batch.
- Signals: the worker ignores SIGINT and SIGTERM (the parent decides and sends "halt").
  A parent that is gone (the pipe ends before "done") halts the worker the same way:
  no new calls, those in flight get --grace to end and be written.
- The worker never sees client credentials: `PushedToken` holds what the parent pushed.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import signal
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from multiprocessing.connection import Connection
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.config import Config
from engine.core.events import EventDefaults, Item
from engine.core.records import Result, jsonl
from engine.core.stats import TokenStats
from engine.errors import EngineError
from engine.files.sinks import JsonlSink
from engine.files.sources import Unit, unit_item
from engine.net.transport import Transport, open_transport
from engine.runtime.engine import Engine, redact_output
from engine.runtime.feeds import event_defaults
from engine.runtime.loop import tune_gc


class PushedToken:
    """A TokenProvider fed by the parent: the header value is pushed, a 401 asks for more."""

    __slots__ = ("_answers", "_changed", "_header", "_request", "_seen", "_waiting")

    def __init__(
        self, header: str | None, request: Callable[[str | None], Awaitable[None]]
    ) -> None:
        self._header = header
        self._request = request
        self._waiting: dict[str | None, anyio.Event] = {}
        self._answers: dict[str | None, bool] = {}
        self._changed = anyio.Event()
        self._seen: list[str] = []
        self._remember(header)

    def _remember(self, header: str | None) -> None:
        if header is not None and header.startswith("Bearer ") and header[7:] not in self._seen:
            self._seen.append(header[7:])

    def authorization(self) -> str | None:
        return self._header

    def set(self, header: str | None) -> None:
        self._header = header
        self._remember(header)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_authorization(self) -> str | None:
        while self._header is None:  # the parent's token is in its mandatory window
            await self._changed.wait()
        return self._header

    async def maintain(self) -> None:
        return None  # the parent keeps the token fresh

    def secrets(self) -> tuple[str, ...]:
        return tuple(self._seen)

    def token_stats(self) -> TokenStats | None:
        return None  # the parent's provider reports for the run

    async def refresh_after_401(self, used: str | None) -> bool:
        if self._header != used:
            return True  # the parent pushed a newer token meanwhile
        if used in self._answers:
            return self._answers[used]
        event = self._waiting.get(used)
        if event is None:  # one question to the parent per refused token, not per call
            event = self._waiting[used] = anyio.Event()
            await self._request(used)
        await event.wait()
        return self._answers.get(used, False)

    def answered(self, used: str | None, ok: bool, header: str | None) -> None:
        self.set(header)
        self._answers[used] = ok
        event = self._waiting.pop(used, None)
        if event is not None:
            event.set()


_REPORT_S = 0.02  # how often a worker that writes the output itself reports its count


async def _worker(
    config: Config, header: str | None, ordered: bool, output: str | None, conn: Connection
) -> None:
    lock = anyio.Lock()

    parent_gone = False

    async def send(message: tuple[Any, ...]) -> None:
        nonlocal parent_gone
        if parent_gone:
            return
        async with lock:
            try:
                await anyio.to_thread.run_sync(conn.send, message)
            except OSError:  # the parent was killed: finish the calls in flight, then end
                parent_gone = True
                halt("the parent process ended", config.grace)

    async def ask(used: str | None) -> None:
        await send(("refresh", used))

    tokens = PushedToken(header, ask)
    engine: Engine | None = None

    def halt(reason: str, grace: float) -> None:
        if engine is None:
            return
        engine.shutdown.halt(reason)
        engine.shutdown.cut_off_after(tg, grace)

    # Unbounded, yet bounded by the parent's credit: it never sends more than that.
    units_send, units_receive = anyio.create_memory_object_stream[list[Unit]](math.inf)

    async def listen() -> None:
        # Until this worker has reported: token answers still come after the last units.
        async with units_send:
            while True:
                try:
                    message = await anyio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
                except (EOFError, OSError):
                    # The parent is gone (killed: a normal end closes the pipe only after
                    # "done"): start no more calls, let those in flight end and be written.
                    halt("the parent process ended", config.grace)
                    return
                kind = message[0]
                if kind == "units":
                    try:
                        units_send.send_nowait(message[1])
                    except anyio.BrokenResourceError:
                        pass  # this worker stopped early; the parent is stopping too
                elif kind == "token":
                    tokens.set(message[1])
                elif kind == "refreshed":
                    tokens.answered(message[1], message[2], message[3])
                elif kind == "end":
                    units_send.close()  # the feed ends; the calls in flight go on
                elif kind == "halt":  # the parent was interrupted
                    halt(message[1], message[2])

    async def emit(batch: list[Result]) -> None:
        if ordered:
            lines = [(r.seq, _redact(r.to_json() + b"\n")) for r in batch]
            await send(("ordered", lines, len(batch)))
        else:
            data = _redact(jsonl(batch))
            await send(("records", data, len(batch)))

    def _redact(data: bytes) -> bytes:  # a server that echoes the token must not leak it
        assert engine is not None  # records exist only once the engine runs
        return redact_output(data, (), engine)

    sink = JsonlSink(output, append=True) if output is not None else None
    unreported = 0

    def write(batch: list[Result]) -> None:
        nonlocal unreported
        assert sink is not None
        sink.write(_redact(jsonl(batch)))
        unreported += len(batch)

    async def report() -> None:
        nonlocal unreported
        while True:
            await anyio.sleep(_REPORT_S)
            if unreported:
                count, unreported = unreported, 0
                await send(("answered", count))

    async with AsyncExitStack() as stack:
        transport: Transport | None = None
        if not config.dry_run:
            transport = await stack.enter_async_context(
                open_transport(
                    concurrency=config.concurrency,
                    timeout=config.timeout,
                    client=config.http_client,
                )
            )
        engine = Engine(config, tokens, transport)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            feed = _unit_feed(units_receive, event_defaults(config))
            if sink is None:
                await engine.execute(feed, emit)
            else:
                async with anyio.create_task_group() as reporting:
                    reporting.start_soon(report)
                    try:
                        await engine.execute(feed, emit, write_now=write)
                    finally:
                        sink.close()  # fsynced before the parent hears "done"
                    reporting.cancel_scope.cancel()
                if unreported:
                    await send(("answered", unreported))
            slowed = None if engine.adaptive is None else engine.adaptive.summary(time.monotonic())
            stats, stopped = engine.state.stats, engine.state.stopped
            await send(("done", stats, stopped, engine.policy.budget.refused, slowed))
            # Nothing more to wait for: not the parent's next message, not a --grace timer
            # still pending after an interrupted run ended early.
            tg.cancel_scope.cancel()


async def _unit_feed(
    receive: MemoryObjectReceiveStream[list[Unit]], defaults: EventDefaults
) -> AsyncGenerator[list[Item], None]:
    async with receive:
        async for units in receive:
            yield [unit_item(unit, defaults) for unit in units]


def worker_main(index: int, conn: Connection, inherited: tuple[int, ...] = ()) -> None:
    """A worker process: waits for its share of the run, then runs it on its own event
    loop (uvloop when installed) until the parent ends it.

    `inherited`: the parent's ends of the pipes a forked worker got a copy of (its own
    and the earlier workers'); closed first, so each pipe ends when the parent closes it.
    """
    # Ctrl-C reaches the whole process group: the parent decides (it halts the workers
    # with --grace), and a worker whose parent is gone finishes its calls on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        message = conn.recv()
    except (EOFError, OSError, KeyboardInterrupt):
        conn.close()
        return  # the run ended (or failed) before it needed this worker
    _, config, header, ordered, output = message
    tune_gc()
    try:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            options = {}
        else:
            options = {"use_uvloop": True}
        # A forked worker starts inside the parent's running task: a fresh context, so
        # nothing of the parent's loop (sniffio's "asyncio is running") is seen here.
        contextvars.Context().run(
            lambda: anyio.run(
                _worker, config, header, ordered, output, conn, backend_options=options
            )
        )
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # reported to the parent, which fails the run with it
        code = exc.exit_code if isinstance(exc, EngineError) else 1
        try:
            conn.send(("error", f"worker {index}: {type(exc).__name__}: {exc}", code))
        except OSError:
            pass
    finally:
        conn.close()
