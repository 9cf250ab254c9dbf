"""`--workers N`: start the worker processes, open the run, let the parent drive it.

The parent's rules are engine/multiproc/parent.py's, a worker's engine/multiproc/child.py's.

Rules:
- The processes start first thing in the run (`open_run`'s `prepare`), before the mock,
  the token or any socket exists: forked when this process has one thread (a forked
  worker inherits nothing but the modules and its pipe, and starts in milliseconds),
  else spawned.
- `--rate R` is split R/N, `--concurrency C` ceil(C/N) per worker: the options keep their
  meaning for the whole run. Workers get no credentials and no output of their own
  beyond what the parent allows.
- However the run ends, every pipe is closed and every process joined (killed after
  `_JOIN_TIMEOUT_S` if it will not end). A worker that cannot be started (EMFILE for its
  pipes, EAGAIN or ENOMEM from fork) is one ConfigError (exit 2: nothing was sent yet),
  once the workers started before it have ended.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Literal

import anyio
import anyio.to_thread

from engine.config import MAX_WORKERS, Config
from engine.core.stats import Summary, summarize
from engine.core.tally import Snapshot, Tally
from engine.errors import ConfigError
from engine.multiproc.child import worker_main
from engine.multiproc.messages import WorkerJob
from engine.multiproc.parent import WorkerHandle, _Parent
from engine.net.auth import TokenProvider
from engine.runtime.display import View
from engine.runtime.session import RunSession, open_run
from engine.runtime.watch import Probe, Watch, input_progress, token_view

_JOIN_TIMEOUT_S = 5.0

StartMethod = Literal["fork", "spawn"]


def auto_workers() -> int:
    """`--workers auto`: one process per CPU this process may run on (MAX_WORKERS at most)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(max(1, cores), MAX_WORKERS)


def worker_config(config: Config) -> Config:
    """One worker's share of the run: rate/N, ceil(concurrency/N), no output of its own."""
    n = config.workers
    return config.with_changes(
        workers=1,
        rate=None if config.rate is None else config.rate / n,
        concurrency=max(1, math.ceil(config.concurrency / n)),
        # "N records in a row" holds for the run: its N consecutive records are shared
        # among the n workers, so one of them sees ceil(N/n) of them in a row (each
        # worker's records are in the run's order). A worker may so stop a little early
        # on a streak of its own; never later than the run's.
        fail_fast_401=math.ceil(config.fail_fast_401 / n),
        streak_share=n,  # the internal streak: ceil(20/n), its message says 20
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
        metrics_addr=None,  # the parent serves the sum of the workers' figures
        dashboard=None,
    )


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


def start_workers(count: int, method: StartMethod | None = None) -> list[WorkerHandle]:
    """Start `count` idle worker processes; each waits for its `Start` message.

    Called first thing in a run, before the mock, the token or any socket exists, so a
    forked worker inherits nothing but the modules (and its pipe)."""
    method = method or start_method()
    ctx = (
        multiprocessing.get_context("fork")
        if method == "fork"
        else multiprocessing.get_context("spawn")
    )
    workers: list[WorkerHandle] = []
    for index in range(count):
        try:
            workers.append(_start_worker(ctx, index, workers, fork=method == "fork"))
        except OSError as exc:  # EMFILE (pipes), EAGAIN or ENOMEM (fork): none can run
            _stop_started(workers)
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"--workers {count}: could not start worker {index + 1} ({reason}); "
                "nothing was sent: lower --workers or raise the limit (ulimit -n, ulimit -u)"
            ) from None
    return workers


def _start_worker(ctx: Any, index: int, started: list[WorkerHandle], *, fork: bool) -> WorkerHandle:
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    try:
        inherited = (
            tuple(c.fileno() for c in [*(w.conn for w in started), parent_conn]) if fork else ()
        )
        process = ctx.Process(
            target=worker_main,
            args=(index, child_conn, inherited, os.getpid()),
            name=f"adbatch-worker-{index}",
            daemon=True,
        )
        process.start()
    except BaseException:
        parent_conn.close()
        raise
    finally:
        child_conn.close()
    return WorkerHandle(index, process, parent_conn)


def _stop_started(workers: list[WorkerHandle]) -> None:
    """End the workers started before one failed to start: each waits for its `Start`,
    and its pipe closed, sees EOF and returns (killed if it will not)."""
    for worker in workers:
        worker.conn.close()
    for worker in workers:
        worker.process.join(_JOIN_TIMEOUT_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(_JOIN_TIMEOUT_S)


def _probe(parent: _Parent) -> Probe:
    """The run's figures in the parent: the workers' LiveFigures summed, the input read
    and the token here."""
    progress = input_progress(parent.session.counts, parent.config.inputs)

    def probe(elapsed: float) -> Snapshot:
        tally = parent.live.copy()
        tokens = parent.tokens.token_stats()
        tally.token_renewals = 0 if tokens is None else tokens.renewals
        tally.events_read = parent.read
        return Snapshot(
            "run",
            elapsed,
            tally,
            in_flight=sum(parent.live_in_flight.values()),
            target_rate=parent.config.rate,
            token=token_view(parent.tokens),
            progress=progress(parent.read, tally.done),
        )

    return probe


class LiveSum:
    """The workers' figures as the parent sums them (load and replay read them to show
    and serve their own view: engine/load/summed.py)."""

    def __init__(self, parent: _Parent) -> None:
        self._parent = parent

    def tally(self) -> Tally:
        return self._parent.live.copy()

    def in_flight(self) -> int:
        return sum(self._parent.live_in_flight.values())

    @property
    def tokens(self) -> TokenProvider:
        return self._parent.tokens

    def jobs(self) -> Sequence[WorkerJob]:
        return self._parent.jobs or ()


async def _stop_processes(workers: list[WorkerHandle]) -> None:
    # After a normal end every pipe is closed already; after a failure closing them
    # makes each worker's listener see EOF, so it stops at once and writes nothing more
    # (engine/multiproc/child.py's rules): --resume sends its calls in flight.
    with anyio.CancelScope(shield=True):
        for worker in workers:
            if not worker.conn.closed:
                worker.conn.close()
        for worker in workers:
            await anyio.to_thread.run_sync(worker.process.join, _JOIN_TIMEOUT_S)
            if worker.process.is_alive():  # it ignores SIGTERM (the parent decides)
                worker.process.kill()
                await anyio.to_thread.run_sync(worker.process.join, _JOIN_TIMEOUT_S)


async def run_workers(
    config: Config,
    *,
    tokens: TokenProvider | None = None,
    start: StartMethod | None = None,
    handle_signals: bool = False,
    watch: Watch | None = None,
) -> Summary:
    """`api.run` over `config.workers` processes (see engine/multiproc/parent.py's rules).

    `tokens`: the run's token provider (default: from the config); it lives in this
    process and only its `authorization()` values reach the workers. `start`: "fork" or
    "spawn" (default: `start_method()`). `handle_signals` (the CLI): SIGINT/SIGTERM stop
    the run as in one process, with --grace for the calls in flight. `watch`: the sum of
    the workers' figures goes there (--metrics-addr, --dashboard).
    """
    summary, _ = await run_worker_jobs(
        config, tokens=tokens, start=start, handle_signals=handle_signals, watch=watch
    )
    return summary


async def run_worker_jobs(
    config: Config,
    jobs: Callable[[RunSession], Sequence[WorkerJob]] | None = None,
    *,
    share: Callable[[Config], Config] | None = None,
    summary_args: Callable[[dict[int, object]], dict[str, Any]] | None = None,
    tokens: TokenProvider | None = None,
    start: StartMethod | None = None,
    handle_signals: bool = False,
    watch: Watch | None = None,
    probe: Callable[[LiveSum], Probe] | None = None,
    view: Callable[[LiveSum], View] | None = None,
) -> tuple[Summary, dict[int, object]]:
    """`run_workers`, and what each worker's job returned (by worker index).

    `jobs`: called with the run's session once it is open (the mock, the token, the
    checked output paths are there), one job per
    worker, run instead of the input handed out by the parent (load, replay). `share`:
    adjusts a worker's config (worker_config's) for its job. `summary_args`: from the
    jobs' results, more arguments for `summarize` (elapsed_s, schedule, ...). `probe`,
    `view`: what `watch` and the live display show of the summed figures (default: a run's)."""
    config = config.validated()
    started = time.perf_counter()
    workers: list[WorkerHandle] = []

    def start_processes(stack: AsyncExitStack) -> None:
        workers.extend(start_workers(config.workers, start))
        stack.push_async_callback(_stop_processes, workers)

    provider: TokenProvider | bool = tokens if tokens is not None else True
    async with open_run(
        config,
        tokens=provider,
        transport=False,
        prepare=start_processes,
        handle_signals=handle_signals,
    ) as session:
        parent = _Parent(session, workers)
        if watch is not None:
            watch.attach(_probe(parent) if probe is None else probe(LiveSum(parent)))
        parent.view = None if view is None else view(LiveSum(parent))
        # The workers' figures also feed the live display (ok, failed, p99).
        live = watch is not None or session.config.progress or view is not None
        worker_share = worker_config(session.config)
        if jobs is not None:
            parent.jobs = list(jobs(session))
            worker_share = worker_share if share is None else share(worker_share)
        await parent.begin(worker_share, live=live)
        await parent.run(handle_signals=handle_signals)
        if parent.error is None:  # how the output closes (an -o URL's join) is told in it
            more = {} if summary_args is None else summary_args(parent.extras)
            session.summary = _summary(parent, session, started, more)
    if parent.error is not None:
        raise parent.error
    assert session.summary is not None
    return session.summary, parent.extras


def _summary(parent: _Parent, session: RunSession, started: float, more: dict[str, Any]) -> Summary:
    """The run's summary from the workers' summed figures."""
    stats = parent.stats
    stats.blank_lines = session.counts.blank_lines
    return summarize(
        stats,
        elapsed_s=more.pop("elapsed_s", time.perf_counter() - started),
        stopped=parent.stopped,
        stop_code=parent.stop_code,
        retry_budget_refused=parent.budget_refused,
        slowed=parent.slowed,
        resumed=parent.resumed,
        tokens=parent.tokens.token_stats(),  # with the workers' calls that waited
        interrupted=parent.interrupted,
        **more,
    )
