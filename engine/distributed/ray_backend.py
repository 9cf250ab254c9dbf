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
- A sender runs the ordinary `_Engine` on its shard, writing to a temporary file named
  for that attempt; when the shard is complete it is fsynced and renamed, then its
  meta (rows, sha256, stats) is written the same way. A shard whose actor dies is run
  again from its start by a fresh actor: its events may be *sent* twice, but the
  output holds each exactly once, because only a complete part is ever renamed.
- The global `--rate` lives in one actor: a token bucket that hands out permits in
  leases of ~10 ms of traffic, so the rate holds across actors whatever their number
  and the lease traffic stays ~100 calls/s. `-c` is per sender.
- The OAuth token lives in one actor, which alone talks to the token endpoint;
  senders read its current value and, after a 401, ask it once for a new one.
- Parts and the plan are kept in `OUT.parts/` (it must be on storage every node sees);
  a rerun with the same inputs skips shards whose part is complete. The driver joins
  the parts in shard order into `-o` (through a temporary file and a rename), writes
  `OUT.manifest.json` (rows and sha256 per shard), then removes `OUT.parts/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from engine.auth import StaticToken, TokenProvider
from engine.config import Config
from engine.distributed.merge import (
    add_stats,
    copy_part,
    read_manifest,
    scan_part,
    stats_to_dict,
    write_json_atomic,
    write_merged_manifest,
)
from engine.distributed.shard import cut_ranges
from engine.errors import ConfigError, FatalError
from engine.events import Item
from engine.results import Result
from engine.runner import Feed, _defaults, _Engine
from engine.sinks import JsonlSink
from engine.sources import (
    _GZIP_MAGIC,
    ReadCounts,
    check_inputs,
    next_batch,
    read_items,
    read_range_items,
    source_format,
)
from engine.stats import RunStats, Summary, summarize

#: Builds the run's token provider inside the token actor (the only place that holds one).
TokenFactory = Callable[[Config], AbstractAsyncContextManager[TokenProvider]]

_LEASE_SECONDS = 0.01
_TOKEN_POLL_SECONDS = 2.0
_MIN_RANGE_BYTES = 1 << 20
_SHARDS_PER_SENDER = 4
_READ_BATCH = 256
SENDER_NAME = "adbatch-sender-{}"


@contextlib.asynccontextmanager
async def static_tokens(config: Config) -> AsyncIterator[TokenProvider]:
    """The default factory: the configured static token (OAuth providers plug in here)."""
    yield StaticToken(config.token)


# -- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardTask:
    """One shard: bytes [start, end) of `path` (whole: the entire file via `read_items`)."""

    index: int
    path: str
    start: int
    end: int
    first_line: int
    whole: bool


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _fingerprint(config: Config) -> list[list[object]]:
    out: list[list[object]] = []
    for path in config.inputs:
        st = os.stat(path)
        out.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    return out


def plan_shards(config: Config, target: int) -> list[ShardTask]:
    """Cut the inputs into about `target` shards, in proportion to their sizes."""
    sizes = {path: os.path.getsize(path) for path in config.inputs}
    total = sum(sizes.values()) or 1
    tasks: list[ShardTask] = []
    for path in config.inputs:
        size = sizes[path]
        whole = _is_gzip(path) or source_format(path, config.input_format) == "csv"
        if whole or size == 0:
            tasks.append(ShardTask(len(tasks), path, 0, size, 1, True))
            continue
        parts = max(1, round(target * size / total))
        with open(path, "rb") as f:
            ranges = cut_ranges(size, parts, functools.partial(_pread, f.fileno()))
        for r in ranges:
            tasks.append(ShardTask(len(tasks), path, r.start, r.end, r.first_line, False))
    return tasks


def _pread(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


def _prepare(
    config: Config, parts_dir: str, senders: int, shards: int | None
) -> tuple[list[ShardTask], list[ShardTask]]:
    """(the plan, its shards still to run) -- a rerun finds some complete already."""
    if shards is None:
        total = sum(os.path.getsize(p) for p in config.inputs)
        shards = max(1, min(senders * _SHARDS_PER_SENDER, total // _MIN_RANGE_BYTES))
    plan = _load_or_plan(config, parts_dir, shards)
    return plan, [t for t in plan if _completed(parts_dir, t) is None]


def _load_or_plan(config: Config, parts_dir: str, target: int) -> list[ShardTask]:
    """The stored plan when the inputs are unchanged (a rerun), else a fresh one."""
    fingerprint = _fingerprint(config)
    stored = read_manifest(os.path.join(parts_dir, "plan.json"))
    if stored is not None and stored.get("inputs") == fingerprint:
        return [ShardTask(**t) for t in stored["shards"]]
    shutil.rmtree(parts_dir, ignore_errors=True)  # parts of other inputs are of no use
    os.makedirs(parts_dir)
    tasks = plan_shards(config, target)
    write_json_atomic(
        os.path.join(parts_dir, "plan.json"),
        {"inputs": fingerprint, "shards": [asdict(t) for t in tasks]},
    )
    return tasks


def _part(parts_dir: str, index: int) -> str:
    return os.path.join(parts_dir, f"part-{index:05d}.jsonl")


def _meta(parts_dir: str, index: int) -> str:
    return os.path.join(parts_dir, f"part-{index:05d}.json")


def _completed(parts_dir: str, task: ShardTask) -> dict[str, Any] | None:
    """The meta of a shard whose part is complete and unchanged, else None."""
    meta = read_manifest(_meta(parts_dir, task.index))
    if meta is None or not os.path.exists(_part(parts_dir, task.index)):
        return None
    info = scan_part(_part(parts_dir, task.index))
    return meta if (info.rows, info.sha256) == (meta["rows"], meta["sha256"]) else None


# -- actors (plain classes; `ray.remote` wraps them when a run starts) --------------------


class RateActor:
    """The global token bucket: `lease(n)` returns n permits when the rate allows them."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def lease(self, n: int) -> int:
        # Subtleness: permits are granted on a virtual schedule, never saved up, so an
        # idle moment does not turn into a burst later (the bucket holds one lease).
        now = time.monotonic()
        at = max(self._next, now)
        self._next = at + n * self._interval
        if at > now:
            await asyncio.sleep(at - now)
        return n


class TokenActor:
    """Holds the run's one token provider; every sender asks here."""

    def __init__(self, config: Config, factory: TokenFactory) -> None:
        self._config = config
        self._factory = factory
        self._stack = AsyncExitStack()
        self._provider: TokenProvider | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> TokenProvider:
        async with self._lock:
            if self._provider is None:
                self._provider = await self._stack.enter_async_context(self._factory(self._config))
            return self._provider

    async def authorization(self) -> str | None:
        return (await self._get()).authorization()

    async def refresh_after_401(self, used: str | None) -> tuple[bool, str | None]:
        provider = await self._get()
        current = provider.authorization()
        if current != used:  # another sender got the new token already
            return current is not None, current
        ok = await provider.refresh_after_401(used)
        return ok, provider.authorization()

    async def close(self) -> None:
        await self._stack.aclose()


class _LeasedLimiter:
    """A sender's view of the global rate: spends leased permits, leases more when out."""

    def __init__(self, rate_actor: Any, lease: int) -> None:
        self._rate = rate_actor
        self._lease = lease
        self._permits = 0
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        while self._permits == 0:
            async with self._lock:
                if self._permits == 0:
                    self._permits += await self._rate.lease.remote(self._lease)
        self._permits -= 1


class _ClusterToken:
    """TokenProvider of a sender: the token actor's current value, followed in the background."""

    def __init__(self, token_actor: Any, header: str | None) -> None:
        self._actor = token_actor
        self._header = header

    def authorization(self) -> str | None:
        return self._header

    async def refresh_after_401(self, used: str | None) -> bool:
        ok, self._header = await self._actor.refresh_after_401.remote(used)
        return bool(ok)

    async def follow(self) -> None:
        while True:
            await anyio.sleep(_TOKEN_POLL_SECONDS)
            self._header = await self._actor.authorization.remote()


@dataclass(frozen=True, slots=True)
class ShardDone:
    index: int
    rows: int
    sha256: str
    stats: dict[str, Any]
    stopped: str | None


class SenderActor:
    """Runs shards through the ordinary engine, one at a time, over one HTTP session."""

    def __init__(
        self, config: Config, rate_actor: Any, token_actor: Any, parts_dir: str, cwd: str
    ) -> None:
        # Input paths are read as the driver was given them (so sources read the same):
        # relative ones from the driver's directory, which shared storage must provide.
        with contextlib.suppress(OSError):
            os.chdir(cwd)
        self._config = config
        self._rate = rate_actor
        self._tokens_actor = token_actor
        self._parts_dir = parts_dir
        self._stack = AsyncExitStack()
        self._transport: Any = None
        self._tokens: _ClusterToken | None = None
        self._limiter: _LeasedLimiter | None = None

    async def _start(self) -> None:
        from engine.transport import AiohttpTransport

        config = self._config
        if not config.dry_run:
            self._transport = await self._stack.enter_async_context(
                AiohttpTransport(concurrency=config.concurrency, timeout=config.timeout)
            )
        header = await self._tokens_actor.authorization.remote()
        self._tokens = _ClusterToken(self._tokens_actor, header)
        if config.rate is not None:
            lease = max(1, math.floor(config.rate * _LEASE_SECONDS))
            self._limiter = _LeasedLimiter(self._rate, lease)

    async def run_shard(self, task: ShardTask) -> ShardDone:
        if self._tokens is None:
            await self._start()
        assert self._tokens is not None
        tokens = self._tokens
        engine = _Engine(self._config, tokens, self._transport, limiter=self._limiter)
        final = _part(self._parts_dir, task.index)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        counts = ReadCounts()
        sink = JsonlSink(tmp)

        async def emit(batch: list[Result]) -> None:
            data = b"".join([r.to_json() + b"\n" for r in batch])
            for secret in _secrets(self._config, tokens):
                data = data.replace(secret, b"[redacted]")
            sink.write(data)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tokens.follow)
                feed = _shard_feed(self._config, task, counts)
                summary = await engine.execute(feed, emit, counts)
                tg.cancel_scope.cancel()
        finally:
            sink.close()
        stats = stats_to_dict(engine.state.stats)
        if summary.stopped is not None:
            os.remove(tmp)  # an incomplete part is never renamed
            return ShardDone(task.index, 0, "", stats, summary.stopped)
        _fsync(tmp)
        info = scan_part(tmp)
        os.replace(tmp, final)
        meta = {"index": task.index, "rows": info.rows, "sha256": info.sha256, "stats": stats}
        write_json_atomic(_meta(self._parts_dir, task.index), meta)
        return ShardDone(task.index, info.rows, info.sha256, stats, None)

    async def close(self) -> None:
        await self._stack.aclose()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _secrets(config: Config, tokens: _ClusterToken) -> list[bytes]:
    out = [config.token] if config.token else []
    header = tokens.authorization()
    if header and header.startswith("Bearer "):
        out.append(header[7:])
    return [s.encode() for s in out if s]


def _shard_items(config: Config, task: ShardTask, counts: ReadCounts) -> Iterator[Item]:
    defaults = _defaults(config)
    if task.whole:
        return read_items(
            [task.path],
            input_format=config.input_format,
            defaults=defaults,
            max_line_bytes=config.max_line_bytes,
            counts=counts,
        )
    return read_range_items(
        task.path,
        task.start,
        task.end,
        first_line=task.first_line,
        defaults=defaults,
        max_line_bytes=config.max_line_bytes,
        counts=counts,
    )


async def _shard_feed(config: Config, task: ShardTask, counts: ReadCounts) -> Feed:
    items = _shard_items(config, task, counts)
    try:
        while batch := await anyio.to_thread.run_sync(next_batch, items, _READ_BATCH):
            yield batch
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


# -- the driver ---------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend ray needs Ray: pip install 'adbatch[ray]' (or pip install ray)"
        ) from None
    return ray


@contextlib.contextmanager
def _ray_session(ray: Any) -> Iterator[None]:
    """Join the cluster at RAY_ADDRESS (or the one already joined), else start a local Ray."""
    if ray.is_initialized():
        yield
        return
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


async def run_ray(
    config: Config,
    *,
    shards: int | None = None,
    senders: int | None = None,
    token_factory: TokenFactory = static_tokens,
    attempts: int = 3,
) -> Summary:
    """Run `config` on Ray; returns the summary of the shards run now (histograms merged).

    `shards` (default: 4 per sender, ranges of at least 1 MiB) and `senders` (default: one
    per CPU of the cluster) are for tests and tuning. A shard whose actor dies is given
    to a fresh actor, up to `attempts` times.
    """
    ray = _import_ray()
    config = config.with_changes(backend="ray").validated()
    check_inputs(config.inputs)
    assert config.output is not None
    output = config.output
    parts_dir = os.path.join(os.getcwd(), output + ".parts")
    start = time.perf_counter()
    with _ray_session(ray):
        async with AsyncExitStack() as stack:
            if config.mock:
                from engine.mock import running_mock

                handle = await stack.enter_async_context(running_mock())
                config = config.with_changes(
                    endpoint=handle.delivery_url, token=handle.config.static_tokens[0], mock=False
                )
            count = senders or max(1, int(ray.cluster_resources().get("CPU", 1)))
            plan, todo = await anyio.to_thread.run_sync(_prepare, config, parts_dir, count, shards)
            done, stopped = await _dispatch(
                ray, config, todo, parts_dir, count, token_factory, attempts
            )
    stats = RunStats()
    for result in done:
        add_stats(stats, result.stats)
    if stopped is None:
        rows = await anyio.to_thread.run_sync(_merge, plan, parts_dir, output)
        skipped = len(plan) - len(todo)
        if skipped:
            print(
                f"adbatch: {skipped} of {len(plan)} shards were complete from an earlier run; "
                f"{rows} rows in {output}",
                file=sys.stderr,
            )
    return summarize(stats, elapsed_s=time.perf_counter() - start, stopped=stopped)


async def _dispatch(
    ray: Any,
    config: Config,
    todo: list[ShardTask],
    parts_dir: str,
    count: int,
    token_factory: TokenFactory,
    attempts: int,
) -> tuple[list[ShardDone], str | None]:
    """Run every shard of `todo` on `count` sender actors; (results, why it stopped)."""
    from ray.exceptions import RayActorError, RayTaskError

    helper = {"num_cpus": 0}
    rate_actor = (
        ray.remote(RateActor).options(**helper).remote(config.rate)
        if config.rate is not None
        else None
    )
    token_actor = ray.remote(TokenActor).options(**helper).remote(config, token_factory)
    sender_cls = ray.remote(SenderActor)

    def new_sender(slot: int, generation: int) -> Any:
        name = SENDER_NAME.format(slot) if generation == 0 else None
        return sender_cls.options(name=name, num_cpus=1).remote(
            config, rate_actor, token_actor, parts_dir, os.getcwd()
        )

    queue = list(reversed(todo))
    tries: dict[int, int] = {}
    done: list[ShardDone] = []
    failures: list[str] = []
    actors: list[Any] = []

    async def slot(index: int) -> None:
        generation = 0
        actor = new_sender(index, generation)
        actors.append(actor)
        while queue and not failures:
            task = queue.pop()
            try:
                result: ShardDone = await actor.run_shard.remote(task)
            except RayActorError:
                tries[task.index] = tries.get(task.index, 0) + 1
                if tries[task.index] >= attempts:
                    failures.append(f"shard {task.index} lost its actor {attempts} times")
                    return
                queue.append(task)  # run again, from its start, by a fresh actor
                generation += 1
                actor = new_sender(index, generation)
                actors.append(actor)
                continue
            except RayTaskError as exc:
                failures.append(f"shard {task.index} ({task.path}) failed: {exc.cause}")
                return
            if result.stopped is not None:
                failures.append(result.stopped)
            done.append(result)

    try:
        async with anyio.create_task_group() as tg:
            for index in range(min(count, len(todo))):
                tg.start_soon(slot, index)
    finally:
        await _close_actors(ray, actors, token_actor, rate_actor)
    if failures:
        return done, (
            f"{failures[0]}; the complete shards are kept in {parts_dir}: run again to finish"
        )
    return done, None


async def _close_actors(ray: Any, actors: list[Any], token_actor: Any, rate_actor: Any) -> None:
    for actor in [*actors, token_actor]:
        with contextlib.suppress(Exception):
            await actor.close.remote()
    for actor in [*actors, token_actor, rate_actor]:
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor)


def _merge(plan: list[ShardTask], parts_dir: str, output: str) -> int:
    """Join the parts in shard order into `output` (atomically) with its manifest."""
    tmp = f"{output}.tmp-{uuid.uuid4().hex}"
    entries: list[dict[str, Any]] = []
    with open(tmp, "wb") as out:
        for task in plan:
            meta = read_manifest(_meta(parts_dir, task.index))
            if meta is None:
                raise FatalError(f"shard {task.index} has no part in {parts_dir}")
            info = copy_part(_part(parts_dir, task.index), out)
            if (info.rows, info.sha256) != (meta["rows"], meta["sha256"]):
                raise FatalError(f"part {info.path} changed after its shard finished")
            entries.append(
                {
                    "shard": task.index,
                    "input": task.path,
                    "bytes": [task.start, task.end],
                    "rows": info.rows,
                    "sha256": info.sha256,
                }
            )
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, output)
    total = scan_part(output)
    write_merged_manifest(output, entries, sha256=total.sha256, shards=len(plan))
    shutil.rmtree(parts_dir, ignore_errors=True)
    return total.rows


__all__ = [
    "SENDER_NAME",
    "RateActor",
    "SenderActor",
    "ShardTask",
    "TokenActor",
    "TokenFactory",
    "plan_shards",
    "run_ray",
    "static_tokens",
]
