"""How delivery calls go out: `Http1Transport` (the default) or `SessionTransport`.

`send(request, authorization)` never raises for a per-call failure: a timeout, a refused
connection or a dropped socket come back as a `Response` with `error` set, so the engine
turns them into records (failures are data).

`Http2Transport` (`--http2`, engine/net/http2.py, the extra adbatch[http2]) is HTTP/2 on
httpx, imported only when asked for.

`Http1Transport` runs on `engine.net.http1` (a BufferedProtocol on httptools' llhttp,
our own keep-alive pool: a fraction of the CPU per call). `SessionTransport`
(engine/net/session_client.py, imported only when asked for: aiohttp loads with it) is
the plain `aiohttp.ClientSession`, kept as `--http-client session` for servers or set-ups the lean
client does not cover (it is the reference the lean one is tested against).

Both read bodies through `engine.net.bodies` (the size limit, `max_response_bytes`, and
bounded decompression: aiohttp's own is off in both): an answer over the limit is a
`too_large` Response that keeps its status, not its body, and its connection is closed.
"""

from __future__ import annotations

import ssl
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from engine.config import DEFAULT_MAX_RESPONSE_BYTES, HTTP_CLIENTS
from engine.core.proxies import Proxies
from engine.core.query import Request
from engine.core.records import Response
from engine.net.http1 import Http1Client, HttpError
from engine.net.outcome import failed

if TYPE_CHECKING:  # imported when asked for: httpx (an optional extra), aiohttp
    from engine.net.http2 import Http2Transport
    from engine.net.session_client import SessionTransport


class Transport(Protocol):
    async def send(self, request: Request, authorization: str | None) -> Response: ...


def open_transport(
    *,
    concurrency: int,
    timeout: float,
    client: str = "http1",
    verify_tls: bool = True,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    proxies: Proxies | None = None,
    tls: ssl.SSLContext | None = None,
) -> Http1Transport | SessionTransport | Http2Transport:
    """The transport named by `client` (one of HTTP_CLIENTS), to use with `async with`."""
    options: dict[str, Any] = {
        "concurrency": concurrency,
        "timeout": timeout,
        "verify_tls": verify_tls,
        "max_response_bytes": max_response_bytes,
        "tls": tls,  # net/tls.py's context (--cacert, --client-cert); None: the default
    }
    if client == "session":
        from engine.net.session_client import SessionTransport  # only now: aiohttp loads

        return SessionTransport(**options, proxies=proxies)
    if client == "http1":
        return Http1Transport(**options, proxies=proxies)
    if client == "http2":
        from engine.net.http2 import Http2Transport  # only now: httpx loads with it

        return Http2Transport(**options, proxies=proxies)
    raise ValueError(f"unknown HTTP client {client!r}; use one of {', '.join(HTTP_CLIENTS)}")


class Http1Transport:
    """Keep-alive connections (at most `concurrency`) on `engine.net.http1`."""

    def __init__(
        self,
        *,
        concurrency: int,
        timeout: float,
        verify_tls: bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        proxies: Proxies | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._client = Http1Client(
            limit=concurrency,
            timeout=timeout,
            verify_tls=verify_tls,
            max_body=max_response_bytes,
            proxies=proxies,
            tls=tls,
        )

    async def __aenter__(self) -> Http1Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Waits until every connection is gone: a TLS connection's close sends its
        # close_notify on later loop turns, and a loop closed before that (uvloop) fails
        # with EBUSY.
        await self._client.aclose()

    async def send(self, request: Request, authorization: str | None) -> Response:
        sent_at = time.time()
        start = time.perf_counter()
        try:
            answer = await self._client.get(request.url, request.headers, authorization)
        except HttpError as exc:
            return failed(sent_at, start, exc.kind, exc.message, exc.status)
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Response(
            answer.status,
            answer.body,
            sent_at,
            latency_ms,
            retry_after=answer.headers.get("retry-after"),
        )
