"""`--backend ray`: the same engine on every CPU of a Ray cluster (extra `adbatch[ray]`).

    driver: plan shards -> N sender actors (one per CPU) -> parts -> merge into -o
                              |  lease permits     |  current token
                          rate actor           token actor

Rules:
- Ray is imported only when a Ray run starts; without the extra, `--backend ray` is a
  one-line configuration error.
- Shards: an uncompressed JSONL file is cut into byte ranges at line starts
  (`shard.cut_ranges`, which also numbers the lines, so `source` stays `path:line`);
  a gzip or CSV file is one shard (a gzip stream cannot be entered mid-way, a CSV
  record may span lines and needs its header). `seq` counts from 0 within a shard.
- A sender runs the ordinary `Engine` on its shard, writing to a temporary file named
  for that attempt; when the shard is complete it becomes a part (renamed in a shared
  directory, put whole on an object store: store.py), then its meta (rows, sha256,
  stats) is written. A shard whose actor dies is run again from its start by a fresh
  actor: its events may be *sent* twice, but the output holds each exactly once,
  because only a complete part is ever kept.
- The global `--rate` lives in one actor: a token bucket that hands out permits in
  leases of ~10 ms of traffic, so the rate holds across actors whatever their number
  and the lease traffic stays ~100 calls/s. `-c` is per sender.
- The OAuth token lives in one actor, which alone talks to the token endpoint;
  senders read its current value and, after a 401, ask it once for a new one.
- Parts and the plan are kept in `OUT.parts/`: for a local `-o`, on storage every node
  sees; for an `-o` URL, on its store, which is then all a node needs (inputs may be
  URLs too). A rerun with the same inputs skips shards whose part is complete. The
  driver joins the parts in shard order into `-o` (join.py), writes
  `OUT.manifest.json` (rows and sha256 per shard), then removes `OUT.parts/`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from engine.config import Config
from engine.core.stats import RunStats, Summary, summarize
from engine.distributed.actors import RateActor, SenderActor, ShardDone, TokenActor, TokenFactory
from engine.distributed.cluster import Interrupt, no_crash_handler, ray_session, signals_caught
from engine.distributed.join import join_parts
from engine.distributed.merge import add_stats
from engine.distributed.plan import ShardTask, prepare, record_options
from engine.distributed.store import Parts, StoreParts, parts_at, storage_environ
from engine.errors import ConfigError, EngineError, OutputError
from engine.files.storage import check_bucket, filesystem, is_url, reason, shown
from engine.net.auth import TokenProvider
from engine.net.providers import open_token_provider
from engine.runtime.session import open_run

SENDER_NAME = "adbatch-sender-{}"
#: How long the actors of a run cut by a signal get to close.
CUT_CLOSE_S = 5.0
T = TypeVar("T")


@contextlib.asynccontextmanager
async def config_tokens(config: Config) -> AsyncIterator[TokenProvider]:
    """The token provider the config asks for, built once per run, in the token actor.

    With client credentials that is engine/net/oauth.py's OAuthToken: its background renewal
    runs in the token actor alone (`TokenActor.maintain`), one token for the cluster.
    """
    async with AsyncExitStack() as stack:
        yield await open_token_provider(config, stack)


def _import_ray() -> Any:
    no_crash_handler()
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend ray needs Ray: pip install 'adbatch[ray]' (or pip install ray)"
        ) from None
    return ray


async def run_ray(
    config: Config,
    *,
    shards: int | None = None,
    senders: int | None = None,
    token_factory: TokenFactory = config_tokens,
    attempts: int = 3,
    handle_signals: bool = False,
) -> Summary:
    """Run `config` on Ray; returns the summary of every shard of the plan (histograms
    merged): those run now and those complete from an earlier run (their metas).

    `shards` (default: 4 per sender, ranges of at least 1 MiB) and `senders` (default: one
    per CPU of the cluster) are for tests and tuning. A shard whose actor dies is given
    to a fresh actor, up to `attempts` times. `handle_signals` (the CLI): SIGINT/SIGTERM
    stop the run, whatever it is doing (cluster.signals_caught).
    """
    async with signals_caught(enabled=handle_signals) as interrupt:
        options = _Options(shards, senders, token_factory, attempts)
        return await _run(config, options, interrupt)


@dataclass(frozen=True, slots=True)
class _Options:
    shards: int | None
    senders: int | None
    token_factory: TokenFactory
    attempts: int


async def _run(config: Config, options: _Options, interrupt: Interrupt) -> Summary:
    """`run_ray` within its signal scope: a signal before the join stops the run there
    (Ray shut down, the complete parts kept); one during the join lets it finish."""
    start = time.perf_counter()
    ray = _import_ray()
    config = config.with_changes(backend="ray", progress=False)
    digest = record_options(config)  # as given: --mock's endpoint is new in every run
    plan: list[ShardTask] = []
    todo: list[ShardTask] = []
    outcome: tuple[list[ShardDone], str | None, int] | None = None
    # The driver sends nothing and writes the output only by merging complete parts; the
    # token lives in the token actor (`token_factory`).
    async with open_run(config, output=False, tokens=False, transport=False) as session:
        config = session.config
        assert config.output is not None
        output = config.output
        parts = parts_at(output, config.storage_options, os.getcwd())
        with interrupt.scope:
            if is_url(output):  # a missing bucket: exit 2 now, before Ray starts
                await anyio.to_thread.run_sync(_check_bucket, output, config)
            async with ray_session(ray):
                start = time.perf_counter()  # the run, not Ray's own start
                count = options.senders or max(1, int(ray.cluster_resources().get("CPU", 1)))
                prepared = functools.partial(prepare, options=digest)
                plan, todo = await _on_store(
                    parts, prepared, config, parts, count, options.shards, before_run=True
                )
                outcome = await _dispatch(
                    ray, config, todo, parts, count, options.token_factory, options.attempts
                )
        signum = interrupt.signum
        done, stopped, stop_code = outcome or ([], None, 3)
        if signum is not None:
            stopped, stop_code = _interrupted(signum, parts), 3
        # An actor's failure may quote a server: it reaches stderr through the one redactor.
        stopped = None if stopped is None else session.secrets.redact(stopped)
    stats = await _on_store(parts, _kept_stats, parts, plan, todo, done, signum is not None)
    if stopped is None:
        # A signal now: the join (on a thread) runs to its end, and says so.
        rows = await _on_store(parts, join_parts, plan, parts, output, config.storage_options)
        skipped = len(plan) - len(todo)
        if skipped:
            print(
                f"adbatch: {skipped} of {len(plan)} shards were complete from an earlier run; "
                f"{rows} rows in {shown(output)}",
                file=sys.stderr,
            )
        signum = interrupt.signum
        if signum is not None:
            stopped = _joined_anyway(signum, rows, output)
    elapsed = time.perf_counter() - start
    return summarize(
        stats, elapsed_s=elapsed, stopped=stopped, stop_code=stop_code, interrupted=signum
    )


def _check_bucket(output: str, config: Config) -> None:
    fs, path = filesystem(output, config.storage_options)
    check_bucket(fs, path, output, config.storage_options)


def _interrupted(signum: int, parts: Parts) -> str:
    name = signal.Signals(signum).name
    return (
        f"interrupted by {name}; the complete shards are kept in {shown(parts.location)}: "
        "run again to finish"
    )


def _joined_anyway(signum: int, rows: int, output: str) -> str:
    """The stop line of a signal that came while the parts were joined: the join is
    whole, and a rerun has nothing to do."""
    name = signal.Signals(signum).name
    return (
        f"interrupted by {name} as the parts were joined; the join finished: "
        f"{rows} rows in {shown(output)}"
    )


def _kept_stats(
    parts: Parts, plan: list[ShardTask], todo: list[ShardTask], done: list[ShardDone], cut: bool
) -> RunStats:
    """The counters of the whole plan, each shard once: those run now from their
    results, the others from the meta of their complete part (an earlier run's, or one
    completed before a signal, `cut`)."""
    stats = RunStats()
    for result in done:
        add_stats(stats, result.stats)
    ran = {result.index for result in done}
    if not cut:  # (every shard of `todo` ran now; one without a result has no part)
        ran |= {t.index for t in todo}
    for task in plan:
        meta = None if task.index in ran else parts.completed(task.index)
        if meta is not None:
            add_stats(stats, meta.get("stats") or {})
    return stats


async def _on_store(
    parts: Parts, func: Callable[..., T], *args: Any, before_run: bool = False
) -> T:
    """`func(*args)` on a thread; a store's own failure becomes one line (exit 3; exit 2
    `before_run`: nothing was sent yet)."""
    try:
        return await anyio.to_thread.run_sync(func, *args)
    except EngineError:
        raise
    except Exception as exc:
        if not isinstance(parts, StoreParts):
            raise
        raise OutputError(
            f"{shown(parts.location)}: {reason(exc, parts.options)}", before_run=before_run
        ) from None


async def _dispatch(
    ray: Any,
    config: Config,
    todo: list[ShardTask],
    parts: Parts,
    count: int,
    token_factory: TokenFactory,
    attempts: int,
) -> tuple[list[ShardDone], str | None, int]:
    """Run every shard of `todo` on `count` sender actors; (results, why it stopped, the
    exit code of that stop)."""
    if not todo:
        return [], None, 3
    run = _Dispatch(ray, config, todo, parts, token_factory, attempts)
    slots = min(count, len(todo))
    cut = True  # (until the slots are done: a signal cancels them)
    try:
        async with anyio.create_task_group() as tg:
            for index in range(slots):
                tg.start_soon(run.slot, index)
        cut = False
    finally:
        with anyio.CancelScope(shield=True):  # an interrupted run still frees its actors
            await _close_actors(ray, run, slots, cut=cut)
    if run.failures:
        return (
            run.done,
            f"{run.failures[0]}; the complete shards are kept in {shown(parts.location)}: "
            "run again to finish",
            run.stop_code,
        )
    return run.done, None, 3


class _Dispatch:
    """The shards of one run handed to sender slots; a slot whose actor dies gets a fresh one."""

    def __init__(
        self,
        ray: Any,
        config: Config,
        todo: list[ShardTask],
        parts: Parts,
        token_factory: TokenFactory,
        attempts: int,
    ) -> None:
        helper = {"num_cpus": 0}
        self.rate_actor = (
            ray.remote(RateActor).options(**helper).remote(config.rate)
            if config.rate is not None
            else None
        )
        self.token_actor = ray.remote(TokenActor).options(**helper).remote(config, token_factory)
        self.token_actor.maintain.remote()  # runs until the actor is killed in _close_actors
        self._sender_cls = ray.remote(SenderActor)
        self._config = config
        self._parts = parts
        output = [config.output] if config.output else []
        self._environ = storage_environ([*config.inputs, *output])
        self._attempts = attempts
        self._queue = list(reversed(todo))
        self._tries: dict[int, int] = {}
        self.done: list[ShardDone] = []
        self.failures: list[str] = []
        self.stop_code = 3  # the exit code of the first failure (70: internal errors)
        self.actors: list[Any] = []

    def _new_sender(self, slot: int, generation: int) -> Any:
        name = SENDER_NAME.format(slot) if generation == 0 else None
        actor = self._sender_cls.options(name=name, num_cpus=1).remote(
            self._config,
            self.rate_actor,
            self.token_actor,
            self._parts,
            os.getcwd(),
            self._environ,
        )
        self.actors.append(actor)
        return actor

    async def slot(self, index: int) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        generation = 0
        actor = self._new_sender(index, generation)
        while self._queue and not self.failures:
            task = self._queue.pop()
            try:
                result: ShardDone = await actor.run_shard.remote(task)
            except RayActorError:
                if not self._retry(task):
                    return
                generation += 1
                actor = self._new_sender(index, generation)
                continue
            except RayTaskError as exc:
                self.failures.append(f"shard {task.index} ({shown(task.path)}) failed: {exc.cause}")
                return
            if result.stopped is not None:
                if not self.failures:
                    self.stop_code = result.stop_code
                self.failures.append(result.stopped)
            self.done.append(result)

    def _retry(self, task: ShardTask) -> bool:
        """Queue `task` again (from its start, for a fresh actor); False past `attempts`."""
        tries = self._tries[task.index] = self._tries.get(task.index, 0) + 1
        if tries >= self._attempts:
            self.failures.append(f"shard {task.index} lost its actor {self._attempts} times")
            return False
        self._queue.append(task)
        return True


async def _close_actors(ray: Any, run: _Dispatch, names: int, *, cut: bool) -> None:
    """Close and kill the run's actors. A `cut` run (a signal) may have lost its
    cluster with it (a process group's SIGTERM reaches a local Ray's own processes,
    whose calls then wait a minute for a GCS that is gone): its closes are bounded and
    its names not waited for, as the driver's Ray ends next."""
    actors = [*run.actors, run.token_actor]
    with anyio.move_on_after(CUT_CLOSE_S if cut else math.inf):
        for actor in actors:
            with contextlib.suppress(Exception):
                await actor.close.remote()
    for actor in [*actors, run.rate_actor]:
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor)
    # A name is free again once its actor is gone; the next run in this session
    # (a rerun, a test) names its senders the same.
    for slot in range(0 if cut else names):
        for _ in range(250):
            try:
                ray.get_actor(SENDER_NAME.format(slot))
            except ValueError:
                break
            await anyio.sleep(0.02)


__all__ = [
    "SENDER_NAME",
    "RateActor",
    "SenderActor",
    "ShardTask",
    "TokenActor",
    "TokenFactory",
    "config_tokens",
    "run_ray",
]
