"""The actors of a Ray run, as plain classes (`ray.remote` wraps them when a run starts).

Rules:
- A sender runs the ordinary `Engine` on one shard at a time, writing to a temporary
  file named for that attempt; only a complete shard becomes a part, then its meta
  (rows, sha256, stats) is written (store.py: renamed in a shared directory, put
  whole on an object store). A dead attempt leaves at most a temporary file, never a part.
- A sender reads its shard where the driver was given it: a path (relative ones from the
  driver's directory), or an object through its store with the run's storage options
  and the driver's storage environment (store.py's `storage_environ`): then a node
  needs only the store.
- The rate actor is a token bucket on a virtual schedule; senders lease permits in
  batches of ~10 ms of the global rate.
- The token actor holds the run's only token provider; senders follow its current
  token (as a `Lease`: a header is never sent past its time) and, after a 401, ask it
  once (it refreshes once for everyone).
- Nothing here imports Ray; handles to other actors are `Any`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio

from engine.config import Config
from engine.core.events import Item, ReadCounts
from engine.core.rates import LeaseSchedule
from engine.core.records import Result, jsonl
from engine.distributed.merge import stats_to_dict
from engine.distributed.plan import ShardTask
from engine.distributed.store import Parts
from engine.errors import AuthError
from engine.files.ranges import read_range_items
from engine.files.sinks import JsonlSink
from engine.files.sources import read_items
from engine.net.auth import FollowerToken, Lease, TokenBroker, TokenProvider
from engine.runtime.engine import Engine
from engine.runtime.feeds import READ_BATCH, event_defaults, thread_batches
from engine.runtime.session import transport_for

#: Builds the run's token provider inside the token actor (the only place that holds one).
TokenFactory = Callable[[Config], AbstractAsyncContextManager[TokenProvider]]

_LEASE_SECONDS = 0.01
_TOKEN_POLL_SECONDS = 2.0


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
    """Holds the run's one token provider, in a TokenBroker; every sender asks here."""

    def __init__(self, config: Config, factory: TokenFactory) -> None:
        self._config = config
        self._factory = factory
        self._stack = AsyncExitStack()
        self._broker: TokenBroker | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> TokenBroker:
        async with self._lock:
            if self._broker is None:
                provider = await self._stack.enter_async_context(self._factory(self._config))
                self._broker = TokenBroker(provider)
            return self._broker

    async def authorization(self) -> Lease:
        """The header to send now and for how long; in a mandatory window, once the
        renewal is done (or, with none within --token-wait, why: `Lease.failed`)."""
        return await (await self._get()).current()

    async def maintain(self) -> None:
        """Renew the token in the background; the driver starts it once, kills it at the end.

        When the renewer gives up, its AuthError ends here: the senders' leases say why
        (`Lease.failed`) and the driver reports it once; raised, Ray would print it as an
        "Unhandled error" with its traceback, as no one waits for this call."""
        with contextlib.suppress(AuthError):
            await (await self._get()).maintain()

    async def refresh_after_401(self, used: str | None) -> tuple[bool, Lease]:
        """A sender's 401 with `used`: (a retry may help, the lease to send now).

        A burst of 401s from every sender costs one renewal (the broker's single flight).
        """
        return await (await self._get()).renew(used)

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


class _ClusterToken(FollowerToken):
    """A sender's TokenProvider: follows the token actor, asks it after a 401."""

    __slots__ = ("_actor",)

    def __init__(self, token_actor: Any, lease: Lease, *, wait: float) -> None:
        # Past its lease a header is not sent: the call fetches the actor's current one.
        super().__init__(
            lease,
            lambda used: token_actor.refresh_after_401.remote(used),
            fetch=lambda: token_actor.authorization.remote(),
            wait=wait,
        )
        self._actor = token_actor

    async def follow(self) -> None:
        """Keep up with the actor's renewals (run by the sender next to its shard)."""
        while True:
            await anyio.sleep(_TOKEN_POLL_SECONDS)
            self.set(await self._actor.authorization.remote())


@dataclass(frozen=True, slots=True)
class ShardDone:
    index: int
    rows: int
    sha256: str
    stats: dict[str, Any]
    stopped: str | None
    stop_code: int = 3  # the exit code of `stopped` (70: a streak of internal errors)


class SenderActor:
    """Runs shards through the ordinary engine, one at a time, over one HTTP session."""

    def __init__(
        self,
        config: Config,
        rate_actor: Any,
        token_actor: Any,
        parts: Parts,
        cwd: str,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        # Input paths are read as the driver was given them (so sources read the same):
        # relative ones from the driver's directory, which shared storage must provide.
        with contextlib.suppress(OSError):
            os.chdir(cwd)
        os.environ.update(environ or {})  # before any store client is made here
        self._config = config
        self._rate = rate_actor
        self._tokens_actor = token_actor
        self._parts = parts
        self._stack = AsyncExitStack()
        self._transport: Any = None
        self._tokens: _ClusterToken | None = None
        self._limiter: _LeasedLimiter | None = None

    async def _start(self) -> None:
        config = self._config
        self._transport = await self._stack.enter_async_context(transport_for(config))
        lease = await self._tokens_actor.authorization.remote()
        self._tokens = _ClusterToken(self._tokens_actor, lease, wait=config.token_wait)
        if config.rate is not None:
            lease = max(1, math.floor(config.rate * _LEASE_SECONDS))
            self._limiter = _LeasedLimiter(self._rate, lease)

    async def run_shard(self, task: ShardTask) -> ShardDone:
        if self._tokens is None:
            await self._start()
        assert self._tokens is not None
        tokens = self._tokens
        engine = Engine(self._config, tokens, self._transport, limiter=self._limiter)
        tmp = self._parts.scratch(task.index)
        counts = ReadCounts()
        sink = JsonlSink(tmp)

        async def emit(batch: list[Result]) -> None:
            # The engine's secrets follow the cluster's token too, not only a static one.
            sink.write(engine.secrets.redact_bytes(jsonl(batch)))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tokens.follow)
                feed = thread_batches(_shard_items(self._config, task, counts), READ_BATCH)
                summary = await engine.execute(feed, emit, counts)
                tg.cancel_scope.cancel()
        finally:
            sink.close()
        stats = stats_to_dict(engine.state.stats)
        if summary.stopped is not None:
            os.remove(tmp)  # an incomplete part is never kept
            return ShardDone(task.index, 0, "", stats, summary.stopped, summary.stop_code)
        info = await anyio.to_thread.run_sync(
            self._parts.commit, tmp, task.index, {"index": task.index, "stats": stats}
        )
        return ShardDone(task.index, info.rows, info.sha256, stats, None)

    async def close(self) -> None:
        await self._stack.aclose()


def _shard_items(config: Config, task: ShardTask, counts: ReadCounts) -> Iterator[Item]:
    defaults = event_defaults(config)
    if task.whole:
        return read_items(
            [task.path],
            input_format=config.input_format,
            defaults=defaults,
            max_line_bytes=config.max_line_bytes,
            counts=counts,
            storage_options=config.storage_options,
        )
    if task.groups:
        from engine.files.parquet import range_items  # pyarrow only for Parquet inputs

        return range_items(
            task.path,
            task.start,
            task.end,
            defaults=defaults,
            counts=counts,
            options=config.storage_options,
        )
    return read_range_items(
        task.path,
        task.start,
        task.end,
        first_line=task.first_line,
        defaults=defaults,
        max_line_bytes=config.max_line_bytes,
        counts=counts,
        storage_options=config.storage_options,
    )
