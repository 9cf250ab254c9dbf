"""`--workers N`: one run spread over N processes, one output file, one summary.

This is the parent; one worker process is engine/multiproc/child.py.

    parent: number records --spans or unit batches--> worker i (own loop, session, rate/N)
    worker i: parse, check, send --encoded JSONL records--> parent --> the one sink
    parent's token provider --Authorization pushes--> every worker

Rules:
- The parent numbers the records (seq, source, blank lines) exactly as a 1-process run
  does, and hands them out as parcels (multiproc/parcels.py): a local JSONL file's by
  byte range, which the worker reads itself, any other input's read here; the workers
  do the CPU work (JSON parsing, checks, query building, HTTP, encoding the records).
  Every input record gets exactly one output line whatever N is: unordered into a
  regular file each worker appends its own records (O_APPEND); otherwise the parent is
  the one writer, with `--ordered` in the order the records were handed out.
  `--resume` skips in the parent what the output already answers.
- Flow control by credit: a worker never holds more than `_credit()` unanswered records,
  so memory is bounded by the concurrency, not by the input size, and a slow worker is
  simply given less. The input is split by demand, not by a fixed modulo, for that reason.
- Tokens: the parent owns the run's one token provider behind the run's one
  `TokenBroker` (so one token request per renewal whatever N is) and pushes every new
  Authorization value to all workers; a worker's 401 asks the parent, whose broker
  renews once for everyone. Workers never use client secrets: they get the bearer token
  they must send, and the run's secrets only to redact what they write themselves.
- Messages are engine/multiproc/messages.py's; starting and stopping the processes is
  engine/multiproc/driver.py's.
- A worker that stops the run (token refused, endpoint unreachable, throttled for good,
  a streak of internal errors) stops them all, with its exit code (3, or 70); a
  worker that dies is a FatalError, raised after everything answered is written.
"""

from __future__ import annotations

import math
import signal
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import anyio
from anyio.abc import TaskGroup

from engine.config import Config
from engine.core.stats import RunStats
from engine.core.stops import output_stop
from engine.core.tally import Tally
from engine.errors import AuthError, FatalError, OutputError
from engine.files.sinks import CHECK_EVERY_S
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
    ToWorker,
    WorkerJob,
)
from engine.multiproc.parcels import BATCH, Parcels
from engine.multiproc.pipes import PipeReader, PipeWriter
from engine.net.auth import Lease, TokenBroker
from engine.runtime.display import View, show_live
from engine.runtime.progress import RunView, tally_figures
from engine.runtime.session import RunSession
from engine.runtime.shutdown import interrupt_reason

_TOKEN_POLL_S = 0.05  # a renewed token reaches the workers well within its mandatory window


@dataclass(slots=True, eq=False)
class WorkerHandle:
    """The parent's end of one worker process."""

    index: int
    process: BaseProcess
    conn: Connection
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    outstanding: int = 0
    done: bool = False
    ended: bool = False


class _Parent:
    def __init__(self, session: RunSession, workers: list[WorkerHandle]) -> None:
        config = self.config = session.config
        self.session = session
        self.tokens = TokenBroker(session.tokens)
        self.sink = session.sink
        assert self.sink is not None
        self.stats = RunStats()
        self.stopped: str | None = None
        self.stop_code = 3  # the exit code of `stopped` when a worker stopped the run
        #: The output refused a write (a full disk): the run stops, writing no more.
        self.output_failed = anyio.Event()
        self.error: FatalError | None = None
        self.workers = workers
        # Unordered into a regular file: the workers append their records themselves.
        self.direct_output = (
            config.output if not config.ordered and self.sink.is_regular_file() else None
        )
        self.credit = anyio.Event()
        self.all_done = anyio.Event()
        self.pushed = self.tokens.lease()
        self.pending: dict[int, bytes] = {}
        self.fed: deque[int] = deque()  # seqs in the order handed out, for --ordered
        self.answered = 0
        self.taken = 0  # records handed out (the progress display's read-ahead)
        self.budget_refused = 0
        self.slowed: str | None = None
        self.writers: dict[int, PipeWriter] = {}  # by worker index, made at its first send
        self.interrupted: int | None = None  # the signal number
        self.feed_scope = anyio.CancelScope()  # reading the input
        # A watched run (--metrics-addr, --dashboard): the sum of the workers' LiveFigures.
        self.live = Tally()
        self.live_in_flight: dict[int, int] = {}  # worker index -> its calls in flight
        self.input = Parcels(session)  # what is handed out, and the records read
        #: Each worker's own job (load, replay: its share of the schedule), instead of
        #: the input handed out here; and what each returned (Done.extra), by worker.
        self.jobs: list[WorkerJob] | None = None
        self.extras: dict[int, object] = {}
        #: The live display instead of a run's (load, replay: their schedule's view).
        self.view: View | None = None

    @property
    def read(self) -> int:  # input records read
        return self.input.read

    @property
    def resumed(self) -> int:  # records the output answered before (--resume)
        return self.input.resumed

    def _credit(self) -> int:
        per_worker = max(1, math.ceil(self.config.concurrency / self.config.workers))
        return max(2 * BATCH, 4 * per_worker)

    async def begin(self, share: Config, *, live: bool = False) -> None:
        """Send every worker its share of the run (they were started before); `live`:
        ask them for their figures while the run goes on (LiveFigures)."""
        self.pushed = self.tokens.lease()
        texts = self.session.secrets.texts()
        start = Start(share, self.pushed, self.config.ordered, self.direct_output, texts, live=live)
        for worker in self.workers:
            job = None if self.jobs is None else self.jobs[worker.index]
            phase = worker.index / len(self.workers)  # --rate: its calls between the others'
            await self._send(worker, replace(start, job=job, phase=phase))

    async def run(self, *, handle_signals: bool = False) -> None:
        try:
            await self._run(handle_signals)
        finally:
            self.input.close()  # every worker is done: no span is read any more
        if self.pending:  # only when a run stopped early: keep what was answered
            self._write(b"".join(self.pending[k] for k in sorted(self.pending)))
            self.pending.clear()

    async def _run(self, handle_signals: bool) -> None:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(self._watch_signals)
            for worker in self.workers:
                tg.start_soon(self._receive, worker, tg)
            tg.start_soon(self._watch_tokens)
            tg.start_soon(self._keep_tokens)
            tg.start_soon(self._watch_output)
            tg.start_soon(self._halt_on_output_failure)
            if self.view is not None:
                tg.start_soon(show_live, self.view)
            elif self.config.progress:
                view = RunView.of_inputs(
                    lambda: tally_figures(self.live, self.taken),
                    self.session.counts,
                    self.config.inputs,
                    note=f"{self.config.workers} workers",
                )
                tg.start_soon(show_live, view)
            await self._dispatch()
            await self.all_done.wait()
            tg.cancel_scope.cancel()

    # -- input -> workers

    async def _dispatch(self) -> None:
        if self.jobs is not None:  # the workers read what their jobs need themselves
            for worker in self.workers:
                await self._end(worker)
            return
        try:
            # A signal cancels this scope, also a read blocked on a silent stdin (that
            # read is abandoned: the generator it runs is left alone, not closed).
            with self.feed_scope:
                parcels = self.input.all()
                async with aclosing(parcels):
                    await self._hand_out(parcels)
        finally:
            for worker in self.workers:
                await self._end(worker)

    async def _hand_out(self, parcels: AsyncIterator[Parcel]) -> None:
        async for parcel in parcels:
            if self.stopped is not None:
                return
            worker = await self._pick()
            if worker is None:
                return
            seqs = parcel.seqs
            self.taken += len(seqs)
            if self.config.ordered:
                self.fed.extend(seqs)
            worker.outstanding += len(seqs)
            await self._send(worker, parcel)

    async def _pick(self) -> WorkerHandle | None:
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

    async def _send(self, worker: WorkerHandle, message: ToWorker) -> None:
        if worker.done:
            return
        async with worker.lock:
            try:
                writer = self.writers.get(worker.index)
                if writer is None:
                    writer = self.writers[worker.index] = PipeWriter(worker.conn)
                await writer.send(message)
            except OSError:
                pass  # the worker is gone; its receiver reports it

    async def _end(self, worker: WorkerHandle) -> None:
        if not worker.ended:
            await self._send(worker, End())
            worker.ended = True

    # -- workers -> output

    async def _receive(self, worker: WorkerHandle, tg: TaskGroup) -> None:
        try:
            messages = PipeReader(worker.conn, name=f"adbatch-worker-{worker.index}")
            while True:
                try:
                    message = await messages.recv()
                except (EOFError, OSError):
                    self._died(worker)
                    return
                if self._handle(worker, message, tg):
                    return
        finally:
            worker.done = True
            async with worker.lock:  # no send in flight: closing ends the worker's listener
                worker.conn.close()
                if (writer := self.writers.pop(worker.index, None)) is not None:
                    writer.close()
            self.credit.set()
            if all(w.done for w in self.workers):
                self.all_done.set()

    def _handle(self, worker: WorkerHandle, message: object, tg: TaskGroup) -> bool:
        """Act on one message of `worker`; True when it was the worker's last."""
        match message:
            case Answered(count):
                self._answered(worker, count)
            case Records(data, count):
                self._write(data)
                self._answered(worker, count)
            case Ordered(lines, count):
                self._ordered(lines)
                self._answered(worker, count)
            case Refresh(used):
                tg.start_soon(self._refresh, worker, used)
            case LiveFigures(tally, in_flight, token_waits):
                self.live.add(tally)
                self.live_in_flight[worker.index] = in_flight
                self.tokens.followers_waited(worker.index, token_waits)
            case Done(stats, stopped, budget_refused, slowed, stop_code, extra, token_waits):
                self.stats.merge(stats)
                self.tokens.followers_waited(worker.index, token_waits)
                self.extras[worker.index] = extra
                self.live_in_flight.pop(worker.index, None)
                if self.stopped is None and stopped is not None:
                    self.stopped = self.session.secrets.redact(stopped)
                    self.stop_code = stop_code
                    # The run stopped: the other workers start no more calls either.
                    tg.start_soon(self._halt_workers, self.stopped)
                self.budget_refused += budget_refused
                self.slowed = self.slowed or slowed
                return True
            case Failed(text, output, kept):
                # A worker's exception may quote a server, and it never saw the client secret.
                text = self.session.secrets.redact(text)
                if output:  # the output failed (a full disk): the run stops, with its summary
                    self._stop_output(output_stop(text, kept=kept, resumable=self.jobs is None))
                    return True
                if self.error is None:
                    self.error = FatalError(text)
                self.stopped = self.stopped or text
                return True
        return False

    def _write(self, data: bytes) -> None:
        # The workers never saw the client secret; a server could echo it.
        assert self.sink is not None
        if self.output_failed.is_set():
            return
        try:
            self.sink.write(self.session.secrets.redact_bytes(data))
        except OutputError as exc:
            resumable = self.jobs is None
            self._stop_output(output_stop(str(exc), kept=exc.kept, resumable=resumable))

    def _stop_output(self, reason: str) -> None:
        """The output failed: the run's stop (exit 3) unless it had one; no more input."""
        if self.stopped is None:
            self.stopped, self.stop_code = reason, FatalError.exit_code
        self.output_failed.set()
        self.feed_scope.cancel()
        self.credit.set()

    async def _halt_on_output_failure(self) -> None:
        await self.output_failed.wait()
        await self._halt_workers(self.stopped or "the output failed")

    def _answered(self, worker: WorkerHandle, count: int) -> None:
        worker.outstanding -= count
        self.answered += count
        self.credit.set()

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

    def _died(self, worker: WorkerHandle) -> None:
        if worker.done:
            return
        code = worker.process.exitcode
        message = f"worker {worker.index} exited unexpectedly" + (
            f" (exit code {code})" if code is not None else ""
        )
        if self.error is None:
            self.error = FatalError(message)
        self.stopped = self.stopped or message

    async def _watch_output(self) -> None:
        """The output deleted or replaced during the run stops it (exit 3). The parent
        owns the output: the workers that append to it directly do not look."""
        assert self.sink is not None
        while True:
            await anyio.sleep(CHECK_EVERY_S)
            try:
                self.sink.check()
            except OutputError as exc:
                self._stop_output(str(exc))
                for worker in self.workers:  # what they write now reaches no file
                    await self._send(worker, Halt(str(exc), 0.0))
                return

    async def _halt_workers(self, reason: str) -> None:
        self.feed_scope.cancel()
        self.credit.set()
        for worker in self.workers:  # a worker already done is skipped by _send
            await self._send(worker, Halt(reason, self.config.grace))

    # -- signals

    async def _watch_signals(self) -> None:
        """SIGINT/SIGTERM (the workers ignore both): stop handing out input and give the
        workers' calls in flight --grace seconds; a second signal cuts them off at once."""
        grace = self.config.grace
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.interrupted is None:
                    self.interrupted = int(signum)
                    # Jobs (load, replay) send a schedule: no --resume to suggest.
                    reason = interrupt_reason(signum, grace, resumable=self.jobs is None)
                    self.stopped = self.stopped or reason
                    self.feed_scope.cancel()
                    self.credit.set()
                    for worker in self.workers:
                        await self._send(worker, Halt(reason, grace))
                else:
                    if self.stopped == reason:  # the first signal's: the second's now
                        again = int(signum)
                        resumable = self.jobs is None
                        self.stopped = interrupt_reason(
                            self.interrupted, grace, resumable=resumable, again=again
                        )
                    for worker in self.workers:
                        await self._send(worker, Halt(self.stopped or reason, 0.0))
                    return

    # -- tokens

    async def _broadcast_token(self, lease: Lease | None = None) -> None:
        # Each lease carries how long its header may be sent: a worker stops using it in
        # time even when the next push is late.
        lease = lease or self.tokens.lease()
        if (lease.header, lease.failed) != (self.pushed.header, self.pushed.failed):
            self.pushed = lease
            for worker in self.workers:
                await self._send(worker, Token(lease))

    async def _keep_tokens(self) -> None:
        try:
            await self.tokens.maintain()
        except AuthError as exc:  # the renewer gave up: stop as after a fatal streak
            self.stopped = self.stopped or str(exc)
            self.credit.set()
            # The workers' calls waiting for a token end now, unsent and unwritten.
            await self._broadcast_token(Lease(None, 0.0, str(exc)))

    async def _watch_tokens(self) -> None:
        while True:  # a provider that renews in the background changes its value
            await anyio.sleep(_TOKEN_POLL_S)
            await self._broadcast_token()

    async def _refresh(self, worker: WorkerHandle, used: str | None) -> None:
        # The broker renews once per refused token however many workers report it.
        ok, lease = await self.tokens.renew(used)
        await self._broadcast_token()
        await self._send(worker, Refreshed(used, ok, lease))
