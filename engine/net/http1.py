"""A lean HTTP/1.1 client: keep-alive pools, one GET at a time per connection.

`aiohttp.ClientSession.get` builds a request object, a response object, a timer, trace
hooks, a cookie filter and a header multidict for every call: about 250 µs of CPU per
call on our benchmark machine, most of a delivery call's cost. A delivery call needs
none of that: the same GET to the same host, over and over. This client is a
BufferedProtocol on httptools' llhttp (engine/net/h1conn.py: framing, 1xx,
`Connection: close`, HTTP/1.0, bodies up to EOF, the idle-bytes check) and a pool per
origin (engine/net/h1pool.py), and does the rest here:

- a pool of keep-alive connections per (scheme, host, port), at most `limit` open, the
  most recently used handed out first;
- the request head written in one `transport.write` of precomputed bytes plus the path
  and the per-call headers; a CR or LF in the query, a header or the authorization is
  refused before anything is sent (request splitting);
- a connection that was idle and turns out to be closed by the server before a single
  byte of the answer came back is replaced and the GET sent once more on a new
  connection (RFC 9112 §9.3.1: a client may retry an idempotent request then; aiohttp's
  session does the same);
- one deadline for the whole call (connecting included, `loop.call_at`), after which
  the connection is dropped, never reused half-read;
- plain bodies kept under `max_body` bytes by the protocol; coded ones (gzip, deflate)
  read and inflated by `engine.net.bodies` under the same limit in bounded steps; an
  answer over it is a `too_large` failure that keeps its status, its connection dropped;
- through a proxy (net/proxy.py), absolute-form requests for `http://`, a CONNECT
  tunnel for `https://` (TLS inside it), pooled alike; the proxy's 407 fails the call.

Failures raise `HttpError` with a `kind` (an `ErrorKind`: connect, timeout, disconnected,
payload, protocol, network, request, too_large, tls, proxy) and a one-line message;
`engine.net.transport` turns them into records.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from engine.config import DEFAULT_MAX_RESPONSE_BYTES
from engine.core.proxies import Proxies, refusal
from engine.core.records import ErrorKind
from engine.net.bodies import ACCEPT_ENCODING, BodyError, read_body
from engine.net.h1conn import Answer, Connection, HttpError, Lost
from engine.net.h1pool import Pool, wait_closed
from engine.net.proxy import forwarded_headers
from engine.net.tls import client_context, tls_failure

__all__ = ["Answer", "Http1Client", "HttpError"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class _Target:
    pool: Pool
    path: str


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
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._common = f"Accept-Encoding: {ACCEPT_ENCODING}\r\n"
        self._proxies = proxies if proxies is not None and proxies.any else None
        self._closing: list[Connection] = []

    def close(self) -> None:
        """Close every connection (their transports finish closing on later loop turns:
        `aclose` waits for that)."""
        self._closing.extend(proto for pool in self._pools.values() for proto in pool.close())
        self._pools.clear()
        self._targets.clear()

    async def aclose(self) -> None:
        """`close`, then wait until every connection is gone (see h1pool.wait_closed)."""
        self.close()
        closing, self._closing = self._closing, []
        await wait_closed(closing)

    def _target(self, base: str) -> _Target:
        target = self._targets.get(base)
        if target is not None:
            return target
        import yarl

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
            common = self._common + (forwarded_headers(via) if tls is None else "")
            pool = Pool(
                asyncio.get_running_loop(),
                url.host,
                port,
                tls,
                limit=self._limit,
                max_body=self._max_body,
                head_start=f"Host: {host_header}\r\n{common}",
                via=via,
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
            pool.watch(proto, deadline)
            try:
                answer = await proto.send(head)
                if proto.stream:  # a coded body: inflated under the limit
                    answer = await self._decoded(proto, answer, deadline)
            except Lost as exc:
                pool.discard(proto)
                if reused and not exc.answered and loop.time() < deadline:
                    # An idle keep-alive connection the server had closed (or reset)
                    # before answering: send again on a fresh one, once.
                    proto, reused = None, False
                    continue
                raise self._lost(exc, loop.time() >= deadline, pool) from None
            except HttpError as exc:
                pool.discard(proto)
                if exc.kind == ErrorKind.TIMEOUT:
                    raise self._timed_out() from None
                raise
            except BaseException:
                pool.discard(proto)
                raise
            pool.release(proto)
            if answer.status == 407 and pool.via is not None:
                raise HttpError(*refusal(pool.via, 407, "", f"{pool.host}:{pool.port}"))
            return answer

    # The helpers below run on the rare paths only (a new connection, a coded body, a
    # failed call): the path of a call on a kept-alive connection stays one frame deep.

    async def _connect(self, pool: Pool, deadline: float) -> Connection:
        """A new connection within what is left of the call's deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                return await pool.connect()
        except TimeoutError:
            raise self._timed_out() from None

    async def _decoded(self, proto: Connection, head: Answer, deadline: float) -> Answer:
        """`head`'s answer with its coded body, read from `proto` and inflated."""
        headers = head.headers
        try:
            body = await read_body(proto, headers.get("content-encoding"), self._max_body, deadline)
        except BodyError as exc:  # the caller drops the connection: the rest is on the wire
            status = head.status if exc.kind == ErrorKind.TOO_LARGE else None
            raise HttpError(exc.kind, exc.message, status) from None
        return Answer(head.status, body, headers)

    def _lost(self, exc: Lost, late: bool, pool: Pool) -> HttpError:
        """What a call whose connection ended raises; `late`: past its deadline."""
        # A TLS 1.3 server's alert (no client certificate) comes on the first read.
        where = f"{pool.host}:{pool.port}"
        if exc.cause is not None and (failure := tls_failure(exc.cause, where)):
            return HttpError(ErrorKind.TLS, failure)
        if late:
            return self._timed_out()
        return exc

    def _timed_out(self) -> HttpError:
        return HttpError(ErrorKind.TIMEOUT, f"no answer within {self._timeout:g}s")


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
