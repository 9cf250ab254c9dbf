"""`--workers N`: one run spread over N processes, one output file, one summary.

This is the parent; one worker process is engine/multiproc/child.py.

    parent: read + number records --unit batches--> worker i (own loop, session, rate/N)
    worker i: parse, check, send --encoded JSONL records--> parent --> the one sink
    parent's token provider --Authorization pushes--> every worker

Rules:
- The parent reads the input and numbers the records (seq, source, blank lines) exactly
  as a 1-process run does (`sources.read_units`); the workers do the CPU work (JSON
  parsing, checks, query building, HTTP, encoding the records). The parent is the only
  writer: every input record gets exactly one output line whatever N is, with
  `--ordered` in the order the records were handed out, and `--resume` skips in the
  parent what the output already answers.
- Flow control by credit: a worker never holds more than `_credit()` unanswered records,
  so memory is bounded by the concurrency, not by the input size, and a slow worker is
  simply given less. The input is split by demand, not by a fixed modulo, for that reason.
- Tokens: the parent owns the run's one TokenProvider (so one token request per renewal
  whatever N is) and pushes every new Authorization value to all workers; a worker's
  401 asks the parent, which refreshes once for everyone. Workers never see client
  secrets, only the bearer token they must send (and redact).
- `--rate R` is split R/N, `--concurrency C` ceil(C/N) per worker: the options keep their
  meaning for the whole run.
- A worker that stops the run (token refused, endpoint unreachable) stops them all; a
  worker that dies is a FatalError, raised after everything answered is written.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from engine.config import Config
from engine.core.events import ReadCounts
from engine.core.secrets import MIN_SECRET_LENGTH
from engine.core.stats import RunStats, Summary, summarize
from engine.errors import AuthError, FatalError, plain_engine_errors
from engine.files.sinks import JsonlSink, ResumeIndex, open_resume
from engine.files.sources import Unit, check_inputs, read_units, unit_item
from engine.multiproc.child import worker_main
from engine.net.auth import TokenProvider
from engine.net.token_client import open_token_provider
from engine.runtime.engine import start_mock
from engine.runtime.feeds import event_defaults
from engine.runtime.shutdown import interrupt_reason

_UNIT_BATCH = 256
_TOKEN_POLL_S = 1.0
_JOIN_TIMEOUT_S = 5.0


def auto_workers() -> int:
    """`--workers auto`: one process per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_config(config: Config) -> Config:
    """One worker's share of the run: rate/N, ceil(concurrency/N), no output of its own."""
    n = config.workers
    return config.with_changes(
        workers=1,
        rate=None if config.rate is None else config.rate / n,
        concurrency=max(1, math.ceil(config.concurrency / n)),
        ordered=False,  # the parent restores the order across workers
        progress=False,
        output=None,
        mock=False,
        inputs=("<parent>",),
        # Workers get the Authorization values from the parent, never the credentials.
        token=None,
        client_id=None,
        client_secret=None,
        resume=False,
    )


# -- the parent side -----------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    outstanding: int = 0
    done: bool = False
    ended: bool = False


@dataclass(slots=True, eq=False)
class _Flight:
    """One renewal after a 401, awaited by every worker that reported the same token."""

    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False


class _Parent:
    def __init__(
        self,
        config: Config,
        tokens: TokenProvider,
        sink: JsonlSink,
        index: ResumeIndex | None,
        workers: list[_Worker],
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.sink = sink
        self.counts = ReadCounts()
        self.stats = RunStats()
        self.stopped: str | None = None
        self.error: FatalError | None = None
        self.workers = workers
        # Unordered into a regular file: the workers append their records themselves.
        self.direct_output = (
            config.output if not config.ordered and sink.is_regular_file() else None
        )
        self.credit = anyio.Event()
        self.all_done = anyio.Event()
        self.pushed = tokens.authorization()
        self.pending: dict[int, bytes] = {}
        self.fed: deque[int] = deque()  # seqs in the order handed out, for --ordered
        self.answered = 0
        self.budget_refused = 0
        self.slowed: str | None = None
        self.resumed = 0
        self.index = index
        self.secrets = tuple(
            s.encode()
            for s in (config.token, config.client_secret)
            if s and len(s) >= MIN_SECRET_LENGTH
        )
        self.receive_limiter = anyio.CapacityLimiter(config.workers + 1)
        self.interrupted: int | None = None  # the signal number
        self.refreshes: dict[str | None, _Flight] = {}  # renewals, by the refused value
        self.feed_scope = anyio.CancelScope()  # reading the input

    def _credit(self) -> int:
        per_worker = max(1, math.ceil(self.config.concurrency / self.config.workers))
        return max(2 * _UNIT_BATCH, 4 * per_worker)

    async def begin(self) -> None:
        """Send every worker its share of the run (they were started before)."""
        share = worker_config(self.config)
        for worker in self.workers:
            await self._send(
                worker, ("start", share, self.pushed, self.config.ordered, self.direct_output)
            )

    async def run(self, *, handle_signals: bool = False) -> None:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(self._watch_signals)
            for worker in self.workers:
                tg.start_soon(self._receive, worker, tg)
            tg.start_soon(self._watch_tokens)
            tg.start_soon(self._keep_tokens)
            if self.config.progress:
                tg.start_soon(self._progress)
            await self._dispatch()
            await self.all_done.wait()
            tg.cancel_scope.cancel()
        if self.pending:  # only when a run stopped early: keep what was answered
            self._write(b"".join(self.pending[k] for k in sorted(self.pending)))
            self.pending.clear()

    # -- input -> workers

    async def _dispatch(self) -> None:
        config = self.config
        units = read_units(
            config.inputs,
            input_format=config.input_format,
            max_line_bytes=config.max_line_bytes,
            counts=self.counts,
        )
        try:
            # A signal cancels this scope, also a read blocked on a silent stdin (that
            # thread is abandoned: the generator it runs is left alone, not closed).
            with self.feed_scope:
                await self._hand_out(units)
        finally:
            if not self.feed_scope.cancel_called:
                units.close()
            for worker in self.workers:
                await self._end(worker)

    async def _hand_out(self, units: Iterator[Unit]) -> None:
        config = self.config
        while self.stopped is None:
            batch = await anyio.to_thread.run_sync(
                _take, units, _UNIT_BATCH, abandon_on_cancel=True
            )
            if not batch:
                return
            # A full batch goes to one worker (fewer, larger messages keep every worker's
            # pool full); a short one (the end of the input, a slow stdin) is shared out,
            # so a short input still runs on every worker.
            full = len(batch) == _UNIT_BATCH
            part_size = len(batch) if full else math.ceil(len(batch) / config.workers)
            if self.index is not None:
                batch = self._unanswered(batch)
            for start in range(0, len(batch), part_size):
                part = batch[start : start + part_size]
                worker = await self._pick()
                if worker is None:
                    return
                if config.ordered:
                    self.fed.extend(unit[0] for unit in part)
                worker.outstanding += len(part)
                await self._send(worker, ("units", part))

    def _unanswered(self, batch: list[Unit]) -> list[Unit]:
        """--resume: drop what the output answers. Only those records are parsed here (for
        their id, which the check needs); the others go to the workers unparsed."""
        assert self.index is not None
        defaults = event_defaults(self.config)
        kept = []
        for unit in batch:
            seq, source, _ = unit
            if self.index.holds(seq) and self.index.answered(
                seq, source, unit_item(unit, defaults).id
            ):
                continue
            kept.append(unit)
        self.resumed += len(batch) - len(kept)
        return kept

    async def _pick(self) -> _Worker | None:
        limit = self._credit()
        while self.stopped is None:
            alive = [w for w in self.workers if not w.done]
            if not alive:
                return None
            best = min(alive, key=lambda w: w.outstanding)
            if best.outstanding < limit:
                return best
            self.credit = anyio.Event()
            await self.credit.wait()
        return None

    async def _send(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        if worker.done:
            return
        async with worker.lock:
            try:
                await anyio.to_thread.run_sync(worker.conn.send, message)
            except OSError:
                pass  # the worker is gone; its receiver reports it

    async def _end(self, worker: _Worker) -> None:
        if not worker.ended:
            await self._send(worker, ("end",))
            worker.ended = True

    # -- workers -> output

    async def _receive(self, worker: _Worker, tg: TaskGroup) -> None:
        try:
            while True:
                try:
                    message = await anyio.to_thread.run_sync(
                        worker.conn.recv, abandon_on_cancel=True, limiter=self.receive_limiter
                    )
                except (EOFError, OSError):
                    self._died(worker)
                    return
                kind = message[0]
                if kind == "answered":
                    self._answered(worker, message[1])
                elif kind == "records":
                    self._write(message[1])
                    self._answered(worker, message[2])
                elif kind == "ordered":
                    self._ordered(message[1])
                    self._answered(worker, message[2])
                elif kind == "refresh":
                    tg.start_soon(self._refresh, worker, message[1])
                elif kind == "done":
                    self.stats.merge(message[1])
                    if message[2] is not None and self.stopped is None:
                        self.stopped = message[2]
                    self.budget_refused += message[3]
                    self.slowed = self.slowed or message[4]
                    return
                elif kind == "error":
                    if self.error is None:
                        self.error = FatalError(message[1])
                    self.stopped = self.stopped or message[1]
                    return
        finally:
            worker.done = True
            async with worker.lock:  # no send in flight: closing ends the worker's listener
                worker.conn.close()
            self.credit.set()
            if all(w.done for w in self.workers):
                self.all_done.set()

    def _write(self, data: bytes) -> None:
        for secret in self.secrets:  # the workers never saw these; a server could echo them
            if secret in data:
                data = data.replace(secret, b"[redacted]")
        self.sink.write(data)

    def _answered(self, worker: _Worker, count: int) -> None:
        worker.outstanding -= count
        self.answered += count
        self.credit.set()

    async def _progress(self) -> None:
        start = time.perf_counter()
        try:
            while True:
                await anyio.sleep(0.5)
                rate = self.answered / (time.perf_counter() - start)
                sys.stderr.write(
                    f"\r\x1b[2Kadbatch: {self.answered} done, {rate:.0f}/s, "
                    f"{self.config.workers} workers"
                )
                sys.stderr.flush()
        finally:
            sys.stderr.write("\r\x1b[2K")

    def _ordered(self, lines: list[tuple[int, bytes]]) -> None:
        pending = self.pending
        for seq, line in lines:
            pending[seq] = line
        ready = []
        fed = self.fed
        while fed and fed[0] in pending:
            ready.append(pending.pop(fed.popleft()))
        if ready:
            self._write(b"".join(ready))

    def _died(self, worker: _Worker) -> None:
        if worker.done:
            return
        code = worker.process.exitcode
        message = f"worker {worker.index} exited unexpectedly" + (
            f" (exit code {code})" if code is not None else ""
        )
        if self.error is None:
            self.error = FatalError(message)
        self.stopped = self.stopped or message

    # -- signals

    async def _watch_signals(self) -> None:
        """SIGINT/SIGTERM (the workers ignore both): stop handing out input and give the
        workers' calls in flight --grace seconds; a second signal cuts them off at once."""
        grace = self.config.grace
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.interrupted is None:
                    self.interrupted = int(signum)
                    reason = interrupt_reason(signum, grace)
                    self.stopped = self.stopped or reason
                    self.feed_scope.cancel()
                    self.credit.set()
                    for worker in self.workers:
                        await self._send(worker, ("halt", reason, grace))
                else:
                    for worker in self.workers:
                        await self._send(worker, ("halt", self.stopped, 0.0))
                    return

    # -- tokens

    async def _broadcast_token(self) -> None:
        header = self.tokens.authorization()
        if header != self.pushed:
            self.pushed = header
            for worker in self.workers:
                await self._send(worker, ("token", header))

    async def _keep_tokens(self) -> None:
        try:
            await self.tokens.maintain()
        except AuthError as exc:  # the renewer gave up: stop as after a fatal streak
            self.stopped = self.stopped or str(exc)
            self.credit.set()

    async def _watch_tokens(self) -> None:
        while True:  # a provider that renews in the background changes its value
            await anyio.sleep(_TOKEN_POLL_S)
            await self._broadcast_token()

    async def _refresh(self, worker: _Worker, used: str | None) -> None:
        # One renewal per refused token however many workers report it at once, even
        # with a provider that is not single-flight itself.
        flight = self.refreshes.get(used)
        if flight is None:
            flight = self.refreshes[used] = _Flight()
            try:
                flight.ok = await self.tokens.refresh_after_401(used)
            finally:
                flight.done.set()
            await self._broadcast_token()
        else:
            await flight.done.wait()
        await self._send(worker, ("refreshed", used, flight.ok, self.tokens.authorization()))


StartMethod = Literal["fork", "spawn"]


def start_method() -> StartMethod:
    """ "fork" when it is safe (Linux, this process has one thread: no lock can be held by
    a thread the child would not have), else "spawn". A forked worker starts in
    milliseconds, with the modules already imported; a spawned one imports them again
    (about half a second of CPU each)."""
    if sys.platform != "linux":
        return "spawn"
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            threads = next((int(line.split()[1]) for line in f if line.startswith("Threads:")), 0)
    except OSError:
        return "spawn"
    return "fork" if threads == 1 else "spawn"


def start_workers(count: int, method: StartMethod | None = None) -> list[_Worker]:
    """Start `count` idle worker processes; each waits for its ("start", ...) message.

    Called first thing in a run, before the mock, the token or any socket exists, so a
    forked worker inherits nothing but the modules (and its pipe)."""
    method = method or start_method()
    ctx = (
        multiprocessing.get_context("fork")
        if method == "fork"
        else multiprocessing.get_context("spawn")
    )
    workers: list[_Worker] = []
    for index in range(count):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        inherited = (
            tuple(c.fileno() for c in [*(w.conn for w in workers), parent_conn])
            if method == "fork"
            else ()
        )
        process = ctx.Process(
            target=worker_main,
            args=(index, child_conn, inherited),
            name=f"adbatch-worker-{index}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        workers.append(_Worker(index, process, parent_conn))
    return workers


async def _stop_processes(workers: list[_Worker]) -> None:
    # After a normal end every pipe is closed already; after a failure closing them
    # makes each worker's listener see EOF, so it finishes its calls and exits.
    with anyio.CancelScope(shield=True):
        for worker in workers:
            if not worker.conn.closed:
                worker.conn.close()
        for worker in workers:
            await anyio.to_thread.run_sync(worker.process.join, _JOIN_TIMEOUT_S)
            if worker.process.is_alive():  # it ignores SIGTERM (the parent decides)
                worker.process.kill()
                await anyio.to_thread.run_sync(worker.process.join, _JOIN_TIMEOUT_S)


def _take(units: Iterator[Unit], size: int) -> list[Unit]:
    batch: list[Unit] = []
    for unit in units:
        batch.append(unit)
        if len(batch) >= size:
            break
    return batch


async def run_workers(
    config: Config,
    *,
    tokens: TokenProvider | None = None,
    start: StartMethod | None = None,
    handle_signals: bool = False,
) -> Summary:
    """`runner.run` over `config.workers` processes (see the module's rules).

    `tokens`: the run's token provider (default: from the config); it lives in this
    process and only its `authorization()` values reach the workers. `start`: "fork" or
    "spawn" (default: `start_method()`). `handle_signals` (the CLI): SIGINT/SIGTERM stop
    the run as in one process, with --grace for the calls in flight.
    """
    config = config.validated()
    check_inputs(config.inputs)
    index = open_resume(config.output) if config.resume else None
    sink = JsonlSink(config.output, append=config.resume)
    started = time.perf_counter()
    parent: _Parent | None = None
    try:
        with plain_engine_errors():
            async with AsyncExitStack() as stack:
                workers = start_workers(config.workers, start)
                stack.push_async_callback(_stop_processes, workers)
                if config.mock:
                    config = await start_mock(config, stack)
                # The run's one token provider (static or OAuth, renewed in the background
                # here); the workers only ever see its `authorization()` values.
                provider = (
                    tokens if tokens is not None else await open_token_provider(config, stack)
                )
                parent = _Parent(config, provider, sink, index, workers)
                await parent.begin()
                await parent.run(handle_signals=handle_signals)
    finally:
        sink.close()
    if parent.error is not None:
        raise parent.error
    stats = parent.stats
    stats.blank_lines = parent.counts.blank_lines
    return summarize(
        stats,
        elapsed_s=time.perf_counter() - started,
        stopped=parent.stopped,
        retry_budget_refused=parent.budget_refused,
        slowed=parent.slowed,
        resumed=parent.resumed,
        tokens=parent.tokens.token_stats(),
        interrupted=parent.interrupted,
    )
