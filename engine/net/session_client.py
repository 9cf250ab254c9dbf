"""`--http-client session`: delivery calls on a plain `aiohttp.ClientSession`.

Kept for servers or set-ups the lean client (engine/net/http1.py) does not cover, and as
the reference the lean one is tested against; imported only when asked for, so a run on
the default client never loads aiohttp. Bodies go through `engine.net.bodies` (aiohttp's
own decompression is off); failures come back as Responses (engine/net/transport.py's
rules).
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
from types import TracebackType
from typing import Any

import aiohttp
import yarl

from engine.config import DEFAULT_MAX_RESPONSE_BYTES
from engine.core.events import header_problem
from engine.core.proxies import Proxies, ProxyURL, refusal, unreachable
from engine.core.query import Request
from engine.core.records import ErrorKind, Response
from engine.net.aiohttp_words import client_error_text, parser_words
from engine.net.bodies import ACCEPT_ENCODING, BodyError, read_body
from engine.net.outcome import failed
from engine.net.proxy import aiohttp_proxy
from engine.net.tls import client_context, tls_failure


class SessionTransport:
    """One aiohttp session with a connection pool sized to the run's concurrency."""

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
        self._concurrency = concurrency
        self._tls = tls if tls is not None else client_context(verify=verify_tls)
        self._proxies = proxies if proxies is not None and proxies.any else None
        self._routes: dict[tuple[str, str, int], ProxyURL | None] = {}
        self._timeout = timeout
        self._verify_tls = verify_tls
        self._max_body = max_response_bytes
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SessionTransport:
        connector = _connector_class()(
            limit=self._concurrency,
            limit_per_host=0,
            ttl_dns_cache=300,
            ssl=self._tls,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            auto_decompress=False,  # engine.net.bodies decompresses, under the limit
            skip_auto_headers=("Content-Type",),
            # The delivery API sets no cookies worth keeping; a real jar filters every
            # request's cookies, a measurable cost per call.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _route(self, text: str) -> tuple[yarl.URL, ProxyURL | None]:
        """`text` as a URL, and the proxy of a call to it (NO_PROXY decides once per
        origin)."""
        url = yarl.URL(text, encoded=True)
        if self._proxies is None:
            return url, None
        key = (url.scheme, url.host or "", url.port or 0)
        if key not in self._routes:
            self._routes[key] = self._proxies.route(*key)
        return url, self._routes[key]

    async def send(self, request: Request, authorization: str | None) -> Response:
        assert self._session is not None, "use the transport inside `async with`"
        headers = _session_headers(request, authorization)
        sent_at = time.time()
        start = time.perf_counter()
        # make_event refuses such values; an Event built by hand must not raise in aiohttp.
        if any(header_problem(value) is not None for value in headers.values()):
            return failed(sent_at, start, ErrorKind.REQUEST, "a header value cannot be sent")
        url, via = self._route(request.url)
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with self._session.get(
                url, headers=headers, allow_redirects=False, proxy=aiohttp_proxy(via)
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                try:
                    coding = resp.headers.get(aiohttp.hdrs.CONTENT_ENCODING)
                    body = await read_body(resp.content, coding, self._max_body, deadline)
                except BodyError as exc:
                    resp.close()  # the rest of the body is still on the wire: drop it
                    if exc.kind == ErrorKind.TIMEOUT:
                        raise TimeoutError from None
                    kept = status if exc.kind == ErrorKind.TOO_LARGE else None
                    return failed(sent_at, start, exc.kind, exc.message, kept)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return failed(sent_at, start, *self._failure(exc, via, url, request.url))
        if status == 407 and via is not None:  # the proxy wants (other) credentials
            return failed(sent_at, start, *refusal(via, 407, "", ""))
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Response(status, body, sent_at, latency_ms, retry_after=retry_after)

    def _failure(
        self, exc: BaseException, via: ProxyURL | None, url: yarl.URL, target: str
    ) -> tuple[str, str]:
        """The kind and one-line text of a call that raised `exc` (aiohttp's errors, the
        one place they become outcomes)."""
        if isinstance(exc, TimeoutError):
            return ErrorKind.TIMEOUT, f"no answer within {self._timeout:g}s"
        if isinstance(exc, aiohttp.ClientHttpProxyError | aiohttp.ClientProxyConnectionError):
            return _proxy_failure(exc, via, url)
        if isinstance(exc, aiohttp.ClientConnectorError):
            if (failure := tls_failure(exc, f"{exc.host}:{exc.port}")) is not None:
                return ErrorKind.TLS, failure
            reason = getattr(exc.os_error, "strerror", None) or str(exc.os_error)
            return ErrorKind.CONNECT, f"cannot connect to {exc.host}:{exc.port}: {reason}"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return ErrorKind.DISCONNECTED, "server closed the connection without answering"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return ErrorKind.PAYLOAD, f"incomplete response body: {parser_words(exc) or exc}"
        if isinstance(exc, aiohttp.ClientError):
            # A TLS 1.3 server's alert (no client certificate) comes on the first read.
            if (failure := tls_failure(exc, _where(target))) is not None:
                return ErrorKind.TLS, failure
            return ErrorKind.NETWORK, client_error_text(exc)  # no excerpt of the answer
        strerror = exc.strerror if isinstance(exc, OSError) else None
        return ErrorKind.NETWORK, f"network error: {strerror or exc}"


def _session_headers(request: Request, authorization: str | None) -> dict[str, str]:
    headers = dict(request.headers)
    # What bodies decodes (aiohttp would add br or zstd when their modules are there).
    headers["Accept-Encoding"] = ACCEPT_ENCODING
    if authorization is not None:
        headers["Authorization"] = authorization
    return headers


def _proxy_failure(
    exc: aiohttp.ClientHttpProxyError | aiohttp.ClientProxyConnectionError,
    via: ProxyURL | None,
    url: yarl.URL,
) -> tuple[str, str]:
    """(kind, message) of a proxy that refused a CONNECT or could not be reached."""
    if via is None:  # cannot be: aiohttp raises these for a proxied call only
        return ErrorKind.PROXY, f"proxy failure: {type(exc).__name__}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return refusal(via, exc.status, exc.message, f"{url.host}:{url.port}")
    reason = getattr(exc.os_error, "strerror", None) or str(exc.os_error)
    return ErrorKind.CONNECT, unreachable(via, reason)


def _where(url: str) -> str:
    parsed = yarl.URL(url, encoded=True)
    return f"{parsed.host}:{parsed.port}"


class _CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, except that a pooled connection holding an answer nobody asked
    for (a whole one, or a head whose body is still coming) or an error is closed instead
    of being handed to the next call, which would read it as its own answer.

    aiohttp checks this when a connection goes back to the pool, not when it comes out;
    bytes that arrive in between are what this closes the gap on. `_get` is aiohttp's
    (private) pool lookup: taken as *args so that a change of signature passes through;
    should it be renamed, this is never called, and should it not be a coroutine
    function (older aiohttp), the plain connector is used (`_connector_class`).

    A partial stray head is not seen here, and need not be: aiohttp gives each request
    a new parser, which never sees the old one's bytes. The http1 client keeps one
    parser and drops a connection on any stray byte.
    """

    async def _get(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            conn = await super()._get(*args, **kwargs)
            if conn is None:
                return None
            protocol = getattr(conn, "protocol", None)
            if protocol is None or not protocol.should_close:
                return conn
            conn.close()


def _connector_class() -> type[aiohttp.TCPConnector]:
    base_get = getattr(aiohttp.TCPConnector, "_get", None)
    return _CheckedConnector if inspect.iscoroutinefunction(base_get) else aiohttp.TCPConnector
