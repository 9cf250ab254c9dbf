"""The actors of a Ray run, as plain classes (`ray.remote` wraps them when a run starts).

Rules:
- A sender runs the ordinary `Engine` on one shard at a time, writing to a temporary
  file named for that attempt; only a complete shard is fsynced and renamed, then its
  meta (rows, sha256, stats) written the same way. A dead attempt leaves at most a
  temporary file, never a part.
- The rate actor is a token bucket on a virtual schedule; senders lease permits in
  batches of ~10 ms of the global rate.
- The token actor holds the run's only token provider; senders follow its current
  token and, after a 401, ask it once (it refreshes once for everyone).
- Nothing here imports Ray; handles to other actors are `Any`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio

from engine.config import Config
from engine.core.events import Item, ReadCounts
from engine.core.records import Result, jsonl
from engine.core.secrets import MIN_SECRET_LENGTH
from engine.core.stats import TokenStats
from engine.distributed.merge import scan_part, stats_to_dict, write_json_atomic
from engine.distributed.plan import ShardTask, meta_path, part_path
from engine.files.sinks import JsonlSink
from engine.files.sources import next_batch, read_items, read_range_items
from engine.net.auth import TokenProvider
from engine.runtime.engine import Engine
from engine.runtime.feeds import Feed, event_defaults

#: Builds the run's token provider inside the token actor (the only place that holds one).
TokenFactory = Callable[[Config], AbstractAsyncContextManager[TokenProvider]]

_LEASE_SECONDS = 0.01
_TOKEN_POLL_SECONDS = 2.0
_READ_BATCH = 256


@dataclass(slots=True)
class LeaseSchedule:
    """When a lease of n permits may be spent, for a global rate (pure; time is given).

    Subtleness: permits are granted on a virtual schedule, never saved up, so an idle
    moment does not turn into a burst later. Over any interval of T seconds the leases
    granted hold at most rate * T + one lease of permits.
    """

    rate: float
    next_at: float = -math.inf

    def grant(self, now: float, n: int) -> float:
        """The time at which `n` permits asked for at `now` may be spent (>= now)."""
        at = max(self.next_at, now)
        self.next_at = at + n / self.rate
        return at


class RateActor:
    """The global token bucket: `lease(n)` returns n permits when the rate allows them."""

    def __init__(self, rate: float) -> None:
        self._schedule = LeaseSchedule(rate)

    async def lease(self, n: int) -> int:
        now = time.monotonic()
        at = self._schedule.grant(now, n)
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
        self._refresh_lock = asyncio.Lock()

    async def _get(self) -> TokenProvider:
        async with self._lock:
            if self._provider is None:
                self._provider = await self._stack.enter_async_context(self._factory(self._config))
            return self._provider

    async def authorization(self) -> str | None:
        provider = await self._get()
        header = provider.authorization()
        if header is None:  # a dynamic token in its mandatory window: wait for the renewal
            header = await provider.wait_authorization()
        return header

    async def maintain(self) -> None:
        """Renew the token in the background; the driver starts it once, kills it at the end."""
        await (await self._get()).maintain()

    async def refresh_after_401(self, used: str | None) -> tuple[bool, str | None]:
        provider = await self._get()
        # One refresh at a time for the whole cluster: when a burst of 401s arrives
        # from every sender, the first refreshes and the rest find the new token.
        async with self._refresh_lock:
            current = provider.authorization()
            if current != used:
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

    async def wait_authorization(self) -> str | None:
        self._header = await self._actor.authorization.remote()
        return self._header

    async def refresh_after_401(self, used: str | None) -> bool:
        ok, self._header = await self._actor.refresh_after_401.remote(used)
        return bool(ok)

    async def maintain(self) -> None:
        return None  # the token actor renews; `follow` (run by the sender) keeps up

    def secrets(self) -> tuple[str, ...]:
        header = self._header
        return (header[7:],) if header and header.startswith("Bearer ") else ()

    def token_stats(self) -> TokenStats | None:
        return None  # counted once, in the token actor

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
        from engine.net.transport import open_transport

        config = self._config
        if not config.dry_run:
            self._transport = await self._stack.enter_async_context(
                open_transport(
                    concurrency=config.concurrency,
                    timeout=config.timeout,
                    client=config.http_client,
                )
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
        engine = Engine(self._config, tokens, self._transport, limiter=self._limiter)
        # Error texts are redacted of the cluster's token too, not only a static one.
        final = part_path(self._parts_dir, task.index)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        counts = ReadCounts()
        sink = JsonlSink(tmp)

        async def emit(batch: list[Result]) -> None:
            data = jsonl(batch)
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
        write_json_atomic(meta_path(self._parts_dir, task.index), meta)
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
    return [s.encode() for s in out if len(s) >= MIN_SECRET_LENGTH]


def _shard_items(config: Config, task: ShardTask, counts: ReadCounts) -> Iterator[Item]:
    defaults = event_defaults(config)
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
