"""A lean HTTP/1.1 client on aiohttp's protocol layer: keep-alive pools, one GET at a time.

`aiohttp.ClientSession.get` builds a request object, a response object, a timer, trace
hooks, a cookie filter and a header multidict for every call: about 250 µs of CPU per
call on our benchmark machine, most of a delivery call's cost. A delivery call needs
none of that: the same GET to the same host, over and over. This module keeps aiohttp's
protocol (`ResponseHandler`) and its C response parser (llhttp: chunked bodies, bodies
up to EOF, 1xx, `Connection: close`, HTTP/1.0), and does the rest itself:

- a pool of keep-alive connections per (scheme, host, port), at most `limit` open, the
  most recently used handed out first (LIFO keeps the pool warm and lets idle ones age);
- the request head written in one `transport.write` of precomputed bytes plus the path
  and the per-call headers;
- a connection that was idle and turns out to be closed by the server before a single
  byte of the answer came back is replaced and the GET sent once more on a new
  connection (RFC 9112 §9.3.1: a client may retry an idempotent request then; aiohttp's
  session does the same);
- a deadline for the whole call (connecting included), after which the connection is
  dropped, never reused half-read;
- bodies read and decompressed by `engine.net.bodies` under `max_body` bytes (gzip and
  deflate in bounded steps; aiohttp's own decompression is off); an answer over it is a
  `too_large` failure that keeps its status, and its connection is dropped;
- through a proxy (net/proxy.py), absolute-form requests for `http://`, a CONNECT
  tunnel for `https://` (TLS inside it), pooled alike; the proxy's 407 fails the call;
- a connection that received anything while it sat idle in the pool (an answer nobody
  asked for, part of one, garbage) or was closed is never handed out again: the next
  call would read those bytes as its own answer.

Failures raise `HttpError` with a `kind` (an `ErrorKind`: connect, timeout, disconnected,
payload, protocol, network, request, too_large) and a one-line message; `engine.net.transport`
turns them into records.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import yarl
from aiohttp import ClientPayloadError, ServerDisconnectedError, hdrs
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDictProxy

from engine.config import DEFAULT_MAX_RESPONSE_BYTES
from engine.core.proxies import Proxies, ProxyURL, refusal
from engine.core.records import ErrorKind
from engine.net.bodies import ACCEPT_ENCODING, BodyError, read_body
from engine.net.proxy import ProxyError, dial, forwarded_headers
from engine.net.tls import client_context, tls_failure

_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpError(Exception):
    """One call failed without a usable HTTP answer; `kind` says how, `status` is the
    answer's status when one came (too_large only)."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: CIMultiDictProxy[str]


@dataclass(frozen=True, slots=True)
class _Target:
    pool: _Pool
    path: str


class _Connection(ResponseHandler):
    """aiohttp's protocol, counting the reads of its socket: the pool compares the count
    when a connection is handed out with the count when it was put back."""

    reads = 0
    reads_at_rest = 0

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        ResponseHandler.data_received(self, data)  # not super(): 130 ns less a read


class _Pool:
    """Keep-alive connections to one origin; at most `limit` open at once."""

    __slots__ = (
        "_connecting",
        "_idle",
        "_limit",
        "_open",
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
        limit: int,
        host_header: str,
        user_headers: str,
        via: ProxyURL | None = None,
    ) -> None:
        self.host = host
        self.via = via  # the proxy connections go through (CONNECT for https)
        self.port = port
        self.loop = loop
        self._ssl = tls
        self._limit = limit
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        # Connections being opened count against `limit` too: without this, N calls
        # arriving together on an empty pool all passed the check and opened N sockets.
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Everything of the head after the request line that every call shares.
        self.head_start = f"Host: {host_header}\r\n{user_headers}"
        self.closed = False

    def take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            proto = idle.pop()
            # Anything read while idle (a stray answer, part of one, garbage: should_close
            # sees only whole ones) or an EOF spoils it.
            if (
                proto.reads == proto.reads_at_rest
                and proto.is_connected()
                and not proto.should_close
            ):
                return proto
            self._drop(proto)
        return None

    async def connect(self) -> _Connection:
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
        loop = self.loop
        proto = None
        self._connecting += 1
        try:
            factory = functools.partial(_Connection, loop)
            proto = await dial(loop, factory, self.host, self.port, self._ssl, self.via)
        except ProxyError as exc:
            raise HttpError(exc.kind, exc.message) from None
        except ssl.SSLError as exc:
            if (failure := tls_failure(exc, f"{self.host}:{self.port}")) is not None:
                raise HttpError(ErrorKind.TLS, failure) from None
            raise HttpError(
                ErrorKind.CONNECT,
                f"TLS handshake with {self.host}:{self.port} failed: {exc.reason}",
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise HttpError(
                ErrorKind.CONNECT, f"cannot connect to {self.host}:{self.port}: {reason}"
            ) from None
        finally:
            self._connecting -= 1
            if proto is None:
                self._wake()  # a failed or cancelled connect frees its slot
        # One parser for the connection's life: llhttp reads one answer after another.
        # Bodies are decompressed by engine.net.bodies, under the size limit.
        proto.set_response_params(read_until_eof=True, auto_decompress=False)
        self._open.add(proto)
        return proto

    def release(self, proto: _Connection) -> None:
        """Back to the pool when it can carry another call, else closed."""
        if self.closed or proto.should_close or not proto.is_connected():
            self._drop(proto)
            return
        proto.reads_at_rest = proto.reads
        self._idle.append(proto)
        self._wake()

    def _drop(self, proto: _Connection) -> None:
        proto.close()
        self._open.discard(proto)
        self._wake()

    def discard(self, proto: _Connection) -> None:
        """A connection in an unknown state (a timeout, a cancel): never reused."""
        proto.abort()
        self._open.discard(proto)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        for proto in list(self._open):
            proto.close()
        self._open.clear()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


class Http1Client:
    """GETs over keep-alive connections, `limit` per origin, `timeout` seconds per call,
    bodies of at most `max_body` bytes (after decompression)."""

    def __init__(
        self,
        *,
        limit: int,
        timeout: float,
        verify_tls: bool = True,
        max_body: int = DEFAULT_MAX_RESPONSE_BYTES,
        proxies: Proxies | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._timeout = timeout
        self._max_body = max_body
        self._verify_tls = verify_tls
        self._tls = tls  # net/tls.py's, with the run's --cacert and client certificate
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._common = f"Accept-Encoding: {ACCEPT_ENCODING}\r\n"
        self._proxies = proxies if proxies is not None and proxies.any else None

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._targets.clear()

    def _target(self, base: str) -> _Target:
        target = self._targets.get(base)
        if target is not None:
            return target
        url = yarl.URL(base, encoded=True)
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS or not url.host:
            raise HttpError(ErrorKind.REQUEST, f"not an http(s) URL: {base}")
        port = url.port or _DEFAULT_PORTS[scheme]
        key = (scheme, url.host, port)
        pool = self._pools.get(key)
        if pool is None:
            tls = None
            if scheme == "https":
                if self._tls is None:
                    self._tls = client_context(verify=self._verify_tls)
                tls = self._tls
            host = url.raw_host or url.host
            if ":" in host:  # an IPv6 literal
                host = f"[{host}]"
            host_header = host if port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
            via = None if self._proxies is None else self._proxies.route(scheme, url.host, port)
            pool = _Pool(
                asyncio.get_running_loop(),
                url.host,
                port,
                tls,
                self._limit,
                host_header,
                self._common + (forwarded_headers(via) if tls is None else ""),
                via,
            )
            self._pools[key] = pool
        # Absolute form (`GET http://host/path`) when the proxy reads the request.
        origin = str(url.origin()) if pool.via is not None and scheme == "http" else ""
        target = _Target(pool, origin + (url.raw_path or "/"))
        if len(self._targets) < 1024:
            self._targets[base] = target
        return target

    async def get(
        self, url: str, headers: Mapping[str, str], authorization: str | None = None
    ) -> Answer:
        """One GET; raises `HttpError` when no complete answer came back."""
        base, sep, query = url.partition("?")
        target = self._target(base)
        parts = ["GET ", target.path, sep, query, " HTTP/1.1\r\n", target.pool.head_start]
        for name, value in headers.items():
            parts.append(f"{name}: {value}\r\n")
        if authorization is not None:
            parts.append(f"Authorization: {authorization}\r\n")
        if _has_line_break(query, headers, authorization):
            raise HttpError(ErrorKind.REQUEST, "a header value or the URL contains a line break")
        parts.append("\r\n")
        head = "".join(parts).encode("utf-8", "surrogateescape")
        pool = target.pool
        loop = pool.loop
        deadline = loop.time() + self._timeout
        proto = pool.take_idle()
        reused = proto is not None
        while True:
            if proto is None:
                proto = await self._connect(pool, deadline)
            transport = proto.transport
            assert transport is not None  # the pool hands out connected ones only
            # The deadline drops the connection, which ends the read below with an error
            # (cheaper per call than a cancel scope; connecting has its own above).
            timer = loop.call_at(deadline, transport.abort)
            try:
                answer = await _exchange(proto, transport, head, self._max_body, deadline)
            # OSError, not just ConnectionError: aiohttp's protocol hands a reset over as
            # ClientOSError (an OSError only), and a stale connection may well be reset.
            except (ServerDisconnectedError, OSError) as exc:
                pool.discard(proto)
                if reused and loop.time() < deadline:
                    # An idle keep-alive connection the server had closed (or reset):
                    # send again on a fresh one, once.
                    proto, reused = None, False
                    continue
                raise self._failure(exc, loop.time() >= deadline, pool) from None
            except (ClientPayloadError, HttpProcessingError) as exc:
                pool.discard(proto)
                raise self._failure(exc, loop.time() >= deadline) from None
            except HttpError as exc:  # a body that could not be had (bodies.py)
                pool.discard(proto)
                if exc.kind == ErrorKind.TIMEOUT:  # its inflating reached the deadline
                    raise self._timed_out() from None
                raise
            except BaseException:
                pool.discard(proto)
                raise
            finally:
                timer.cancel()
            pool.release(proto)
            if answer.status == 407 and pool.via is not None:
                raise HttpError(*refusal(pool.via, 407, "", f"{pool.host}:{pool.port}"))
            return answer

    # The helpers below run on the rare paths only (a new connection, a failed call): the
    # path of a call on a kept-alive connection stays one frame deep, as it was measured.

    async def _connect(self, pool: _Pool, deadline: float) -> _Connection:
        """A new connection within what is left of the call's deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                return await pool.connect()
        except TimeoutError:
            raise self._timed_out() from None

    def _failure(self, exc: Exception, late: bool, pool: _Pool | None = None) -> HttpError:
        """What an exchange that failed raises; `late`: the call's deadline had passed."""
        # A TLS 1.3 server's alert (no client certificate) comes on the first read.
        if pool is not None and (failure := tls_failure(exc, f"{pool.host}:{pool.port}")):
            return HttpError(ErrorKind.TLS, failure)
        if late and isinstance(exc, (ServerDisconnectedError, OSError, ClientPayloadError)):
            return self._timed_out()
        if isinstance(exc, ServerDisconnectedError):
            return HttpError(
                ErrorKind.DISCONNECTED, "server closed the connection without answering"
            )
        if isinstance(exc, OSError):
            return HttpError(ErrorKind.NETWORK, f"network error: {_reason(exc)}")
        if isinstance(exc, ClientPayloadError):
            return HttpError(ErrorKind.PAYLOAD, _one_line(f"incomplete response body: {exc}"))
        # A malformed answer is one whenever it came: no deadline check.
        message = exc.message if isinstance(exc, HttpProcessingError) else ""
        return HttpError(
            ErrorKind.PROTOCOL, _one_line(f"malformed HTTP response: {message or exc}")
        )

    def _timed_out(self) -> HttpError:
        return HttpError(ErrorKind.TIMEOUT, f"no answer within {self._timeout:g}s")


async def _exchange(
    proto: _Connection, transport: asyncio.Transport, head: bytes, max_body: int, deadline: float
) -> Answer:
    transport.write(head)
    while True:
        message, payload = await proto.read()
        # 1xx are interim answers (101 would be an upgrade, which we never ask for).
        if not 100 <= message.code < 200:
            break
    headers = message.headers
    try:
        # An istr key: a third of the cost of a str one.
        body = await read_body(payload, headers.get(hdrs.CONTENT_ENCODING), max_body, deadline)
    except BodyError as exc:  # the caller drops the connection: the rest is on the wire
        status = message.code if exc.kind == ErrorKind.TOO_LARGE else None
        raise HttpError(exc.kind, exc.message, status) from None
    return Answer(message.code, body, headers)


def _reason(exc: OSError) -> str:
    return _one_line(exc.strerror or str(exc) or type(exc).__name__)


def _one_line(text: str) -> str:
    # llhttp's messages span lines (the bad line, a caret under it); records and logs
    # want one line.
    return " ".join(text.split())


def _has_line_break(query: str, headers: Mapping[str, str], authorization: str | None) -> bool:
    # A CR or LF in a value would end the header early and let input data write headers
    # of its own (request splitting).
    if "\n" in query or "\r" in query:
        return True
    if authorization is not None and ("\n" in authorization or "\r" in authorization):
        return True
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            return True
    return False
