"""How delivery calls go out: `Http1Transport` (the default) or `SessionTransport`.

`send(request, authorization)` never raises for a per-call failure: a timeout, a refused
connection or a dropped socket come back as a `Response` with `error` set, so the engine
turns them into records (failures are data).

`Http1Transport` runs on `engine.net.http1` (aiohttp's protocol and C parser, our own
keep-alive pool: about a fifth of the CPU per call). `SessionTransport` is the plain
`aiohttp.ClientSession`, kept as `--http-client session` for servers or set-ups the lean
client does not cover (it is the reference the lean one is tested against).
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Protocol

import aiohttp
import yarl

from engine.config import HTTP_CLIENTS
from engine.core.events import header_problem
from engine.core.query import Request
from engine.core.records import ErrorKind, Response
from engine.net.http1 import Http1Client, HttpError


class Transport(Protocol):
    async def send(self, request: Request, authorization: str | None) -> Response: ...


def open_transport(
    *, concurrency: int, timeout: float, client: str = "http1", verify_tls: bool = True
) -> Http1Transport | SessionTransport:
    """The transport named by `client` (one of HTTP_CLIENTS), to use with `async with`."""
    if client == "session":
        return SessionTransport(concurrency=concurrency, timeout=timeout, verify_tls=verify_tls)
    if client == "http1":
        return Http1Transport(concurrency=concurrency, timeout=timeout, verify_tls=verify_tls)
    raise ValueError(f"unknown HTTP client {client!r}; use one of {', '.join(HTTP_CLIENTS)}")


class Http1Transport:
    """Keep-alive connections (at most `concurrency`) on `engine.net.http1`."""

    def __init__(self, *, concurrency: int, timeout: float, verify_tls: bool = True) -> None:
        self._client = Http1Client(limit=concurrency, timeout=timeout, verify_tls=verify_tls)

    async def __aenter__(self) -> Http1Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.close()

    async def send(self, request: Request, authorization: str | None) -> Response:
        sent_at = time.time()
        start = time.perf_counter()
        try:
            answer = await self._client.get(request.url, request.headers, authorization)
        except HttpError as exc:
            return _failed(sent_at, start, exc.kind, exc.message)
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Response(
            answer.status,
            answer.body,
            sent_at,
            latency_ms,
            retry_after=answer.headers.get("Retry-After"),
        )


class SessionTransport:
    """One aiohttp session with a connection pool sized to the run's concurrency."""

    def __init__(self, *, concurrency: int, timeout: float, verify_tls: bool = True) -> None:
        self._concurrency = concurrency
        self._timeout = timeout
        self._verify_tls = verify_tls
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SessionTransport:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            limit_per_host=0,
            ttl_dns_cache=300,
            ssl=self._verify_tls,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            auto_decompress=True,
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

    async def send(self, request: Request, authorization: str | None) -> Response:
        assert self._session is not None, "use the transport inside `async with`"
        headers = dict(request.headers)
        if authorization is not None:
            headers["Authorization"] = authorization
        sent_at = time.time()
        start = time.perf_counter()
        # make_event refuses such values; an Event built by hand must not raise in aiohttp.
        if any(header_problem(value) is not None for value in headers.values()):
            return _failed(sent_at, start, ErrorKind.REQUEST, "a header value cannot be sent")
        try:
            async with self._session.get(
                yarl.URL(request.url, encoded=True), headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            return _failed(
                sent_at, start, ErrorKind.TIMEOUT, f"no answer within {self._timeout:g}s"
            )
        except aiohttp.ClientConnectorError as exc:
            reason = getattr(exc.os_error, "strerror", None) or str(exc.os_error)
            return _failed(
                sent_at,
                start,
                ErrorKind.CONNECT,
                f"cannot connect to {exc.host}:{exc.port}: {reason}",
            )
        except aiohttp.ServerDisconnectedError:
            return _failed(
                sent_at,
                start,
                ErrorKind.DISCONNECTED,
                "server closed the connection without answering",
            )
        except aiohttp.ClientPayloadError as exc:
            return _failed(sent_at, start, ErrorKind.PAYLOAD, f"incomplete response body: {exc}")
        except aiohttp.ClientError as exc:
            return _failed(sent_at, start, ErrorKind.NETWORK, f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            return _failed(
                sent_at, start, ErrorKind.NETWORK, f"network error: {exc.strerror or exc}"
            )
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Response(status, body, sent_at, latency_ms, retry_after=retry_after)


def _failed(sent_at: float, start: float, kind: str, message: str) -> Response:
    return Response(
        None, b"", sent_at, (time.perf_counter() - start) * 1000.0, error=message, error_kind=kind
    )
