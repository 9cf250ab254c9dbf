"""Keep-alive connections to one origin (scheme, host, port) for the http1 client.

Rules:
- At most `limit` connections open at once, those being opened included (without that,
  N calls arriving together on an empty pool all passed the check and opened N sockets).
- The most recently used idle connection is handed out first (LIFO keeps the pool warm
  and lets idle ones age).
- A connection that received anything while idle, was closed, or whose last answer
  did not allow another call is never handed out again (h1conn.py's rules).
- A call's deadline is its connection's (`watch`): one timer per pool, armed at the
  soonest deadline in flight, expires every connection past its own (h1conn's `expire`)
  and re-arms at the next; not a timer per call (creating and cancelling one cost ~1 µs
  a call). A call that ends clears its connection's deadline (`finish`).
- `aclose` closes every connection and waits for each to be gone (a bounded wait, then
  an abort): no transport is left half-closed when the loop closes (uvloop raised
  EBUSY at loop close for a TLS connection inside a proxy tunnel still closing).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import ssl

from engine.core.proxies import ProxyURL
from engine.core.records import ErrorKind
from engine.net.h1conn import Connection, HttpError
from engine.net.outbox import Outbox
from engine.net.proxy import ProxyError, dial
from engine.net.tls import tls_failure

#: How long `aclose` waits for connections to finish closing before it aborts them.
_CLOSE_WAIT = 1.0
#: A deadline this close to the loop's clock is due (uvloop's timers fire to the ms).
_CLOCK_SLACK = 0.001


class Pool:
    __slots__ = (
        "_alarm",
        "_alarm_at",
        "_connecting",
        "_idle",
        "_limit",
        "_max_body",
        "_open",
        "_outbox",
        "_ssl",
        "_waiters",
        "closed",
        "head_start",
        "host",
        "loop",
        "port",
        "via",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        *,
        limit: int,
        max_body: int,
        head_start: str,
        via: ProxyURL | None = None,
    ) -> None:
        self.host = host
        self.via = via  # the proxy connections go through (CONNECT for https)
        self.port = port
        self.loop = loop
        self._outbox = Outbox(loop)
        self._ssl = tls
        self._limit = limit
        self._max_body = max_body
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Everything of the head after the request line that every call shares.
        self.head_start = head_start
        self.closed = False
        self._alarm: asyncio.TimerHandle | None = None
        self._alarm_at = math.inf

    def watch(self, proto: Connection, deadline: float) -> None:
        """`proto`'s call fails `timeout` (and the connection is dropped) at `deadline`."""
        proto.deadline = deadline
        if deadline < self._alarm_at:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm_at = when
        self._alarm = self.loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._alarm, self._alarm_at = None, math.inf
        if self.closed:
            return
        # The loop's clock is read once per turn and timers fire to its resolution: a
        # deadline within that of now is due (as asyncio's own loop decides for timers).
        due = self.loop.time() + _CLOCK_SLACK
        soonest = math.inf
        for proto in list(self._open):
            deadline = proto.deadline
            if deadline <= due:
                proto.expire()
            elif deadline < soonest:
                soonest = deadline
        if soonest < math.inf:
            self._arm(soonest)

    def take_idle(self) -> Connection | None:
        idle = self._idle
        while idle:
            proto = idle.pop()
            if proto.keep and not proto.spoiled and not proto.lost:
                return proto
            self.discard(proto)
        return None

    async def connect(self) -> Connection:
        while len(self._open) + self._connecting >= self._limit:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Cancelled (a deadline) just after being woken: pass the wake-up on, or
                # the next waiter sleeps while a slot is free.
                if waiter.done() and not waiter.cancelled():
                    self._wake()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            proto = self.take_idle()
            if proto is not None:
                return proto
        if self.closed:
            raise HttpError(ErrorKind.NETWORK, "the HTTP client is closed")
        proto = None
        self._connecting += 1
        try:
            proto = await self._dial()
        finally:
            self._connecting -= 1
            if proto is None:
                self._wake()  # a failed or cancelled connect frees its slot
        self._open.add(proto)
        return proto

    async def _dial(self) -> Connection:
        max_body, outbox = self._max_body, self._outbox
        where = f"{self.host}:{self.port}"
        try:
            return await dial(
                self.loop,
                lambda: Connection(max_body, outbox),
                self.host,
                self.port,
                self._ssl,
                self.via,
            )
        except ProxyError as exc:
            raise HttpError(exc.kind, exc.message) from None
        except ssl.SSLError as exc:
            if (failure := tls_failure(exc, where)) is not None:
                raise HttpError(ErrorKind.TLS, failure) from None
            raise HttpError(
                ErrorKind.CONNECT, f"TLS handshake with {where} failed: {exc.reason}"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise HttpError(ErrorKind.CONNECT, f"cannot connect to {where}: {reason}") from None

    def release(self, proto: Connection) -> None:
        """Back to the pool when it can carry another call, else closed."""
        proto.finish()
        if self.closed or not proto.keep or proto.spoiled or proto.lost:
            self.discard(proto)
            return
        self._idle.append(proto)
        self._wake()

    def discard(self, proto: Connection) -> None:
        """Closed for good: its state is unknown (a failure, a timeout, a cancel) or it
        cannot carry another call. An abort: nothing of it is worth flushing."""
        if proto.transport is not None:
            proto.transport.abort()
        self._open.discard(proto)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> list[Connection]:
        """Close every connection; returns them, for `aclose` to wait on."""
        self.closed = True
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm, self._alarm_at = None, math.inf
        protos = list(self._open)
        for proto in protos:
            if proto.transport is not None:
                proto.transport.close()
        self._open.clear()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        return protos


async def wait_closed(protos: list[Connection]) -> None:
    """Wait until every one of `protos` is gone (connection_lost ran); those still
    closing after `_CLOSE_WAIT` are aborted, and waited for once more."""
    pending = [proto for proto in protos if not proto.lost]
    if not pending:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_CLOSE_WAIT):
            await asyncio.gather(*(proto.wait_closed() for proto in pending))
    stuck = [proto for proto in pending if not proto.lost]
    for proto in stuck:
        if proto.transport is not None:
            proto.transport.abort()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_CLOSE_WAIT):
            await asyncio.gather(*(proto.wait_closed() for proto in stuck))
