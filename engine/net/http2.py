"""`--http-client http2` (`--http2`): delivery calls over HTTP/2, on httpx with h2.

Rules:
- Optional: the extra `adbatch[http2]` brings httpx and h2. Only
  `engine.net.transport.open_transport` imports this module, and only when the client is
  asked for, so `import engine` and the other two clients never load httpx; without the
  extra, Config.validated() refuses the option (exit 2) before anything runs.
- HTTP/2 is negotiated by ALPN over https://. A server that does not offer it, and plain
  http://, get HTTP/1.1 from the same client (as `curl --http2` does over TLS).
- Multiplexing: httpcore sends every call to an origin over one HTTP/2 connection, at
  most 100 streams at a time (its own MAX_CONCURRENT_STREAMS; the server may allow fewer),
  the rest waiting inside their deadline. So there is one client (one connection) per 100
  calls of `concurrency`, and each call goes to the least busy one.
- The records are the other clients': the status, the body read raw (`aiter_raw`: httpx's
  decoding is not used) through `engine.net.bodies` under the size limit, with their
  Accept-Encoding; Retry-After; httpx's exceptions become the same error kinds (`_failure`,
  the one place; an answer cut short after its headers is `payload`, in `_exchange`).
  httpx's default headers are dropped: the call carries what http1 sends, values in UTF-8.
- One deadline per call (`asyncio.timeout`) and none of httpx's own timeouts: an httpx
  read timeout fails every stream of the connection, a cancel only its own call.
- A call given up on (its deadline, a too_large answer, an error) has its stream reset
  (RST_STREAM: net/http2_pool.py). httpcore 1.0 does not reset it (encode/httpcore#943):
  the stream stays open in h2's accounting, its late DATA frames take connection window
  for good, and once as many are open as the server allows streams (nginx: 128), every
  new call on the connection fails ("Max outbound streams is 128, 128 open").
- A call the server refused unprocessed is sent again at once, on a live or a new
  connection, within its deadline and outside `attempts`, budget and rate (as http1
  resends on a dropped idle connection): a stream above a GOAWAY's last-stream-id, one
  whose headers met a connection already closed, one reset with REFUSED_STREAM (RFC 9113
  §8.7: no such call reached the application; this one after a pause of 50 ms doubling,
  three times at most, as the server sheds load). Bounded: at most `concurrency + 1` times
  (a server answering one stream per connection still serves every call ahead of it),
  and twice from a GOAWAY that took no stream at all; then it is `disconnected`.
- Nothing from the environment (`trust_env=False`): TLS is net/tls.py's (--cacert,
  --client-cert; the system store, which honours SSL_CERT_FILE), in a context of this
  client's own: httpcore sets ALPN on it. Proxies are core/proxies.py's (--proxy, the
  proxy variables, NO_PROXY), one route per origin: a `CONNECT` tunnel for https://
  (HTTP/2 inside it; the calls that come while it opens wait for it, as for a direct
  connection: net/http2_pool.shared_tunnels); a refusal and an unreachable proxy read as
  with the other clients; a certificate failure is a `tls` record (final).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType

import h2.errors
import h2.events
import h2.exceptions
import httpcore
import httpx

from engine.config import DEFAULT_MAX_RESPONSE_BYTES
from engine.core.events import header_problem
from engine.core.proxies import Proxies, ProxyURL, refusal, unreachable
from engine.core.query import Request
from engine.core.records import ErrorKind, Response
from engine.net.bodies import ACCEPT_ENCODING, BodyError, read_body
from engine.net.http2_pool import (
    NOT_A_STATUS,
    hook,
    reset_abandoned,
    shared_tunnels,
    whole_stream_limits,
    whole_writes,
)
from engine.net.outcome import failed, one_line, unquoted
from engine.net.tls import client_context, tls_failure

#: Streams httpcore opens at once on one HTTP/2 connection (its MAX_CONCURRENT_STREAMS).
STREAMS_PER_CONNECTION = 100


class Http2Transport:
    """httpx AsyncClients with HTTP/2, one per `STREAMS_PER_CONNECTION` of `concurrency`
    (per proxy route: calls to one endpoint have one)."""

    def __init__(
        self,
        *,
        concurrency: int,
        timeout: float,
        verify_tls: bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        tls: ssl.SSLContext | None = None,
        proxies: Proxies | None = None,
    ) -> None:
        self._concurrency = concurrency
        self._timeout = timeout
        # Its own context, never one shared with the token client: httpcore sets ALPN
        # (h2) on the context it is given (runtime/session.py makes one for it).
        self._tls = tls if tls is not None else client_context.__wrapped__(verify=verify_tls)
        self._max_body = max_response_bytes
        self._proxies = proxies if proxies is not None and proxies.any else None
        self._routes: dict[tuple[str, str, int], ProxyURL | None] = {}
        self._groups: dict[ProxyURL | None, _Group] = {}
        self._open = False

    async def __aenter__(self) -> Http2Transport:
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        groups, self._groups = self._groups, {}
        for group in groups.values():
            for client in group.clients:
                await client.aclose()

    def _group(self, url: str) -> tuple[_Group, ProxyURL | None]:
        via = None
        if self._proxies is not None:
            parsed = httpx.URL(url)
            key = (parsed.scheme, parsed.host, parsed.port or _PORTS.get(parsed.scheme, 0))
            if key not in self._routes:
                self._routes[key] = self._proxies.route(*key)
            via = self._routes[key]
        group = self._groups.get(via)
        if group is None:
            count = -(-self._concurrency // STREAMS_PER_CONNECTION)
            group = self._groups[via] = _Group([self._client(via) for _ in range(count)])
        return group, via

    def _client(self, via: ProxyURL | None) -> httpx.AsyncClient:
        proxy = None
        if via is not None:
            auth = None if via.user is None else (via.user, via.password or "")
            proxy = httpx.Proxy(f"http://{via.authority}", auth=auth)
        transport = httpx.AsyncHTTPTransport(
            http2=True,
            verify=self._tls,
            proxy=proxy,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=self._concurrency,
                max_keepalive_connections=self._concurrency,
            ),
        )
        whole_writes(transport)
        whole_stream_limits()
        shared_tunnels(transport)
        client = httpx.AsyncClient(
            transport=transport,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(None),  # the call's deadline is ours (module rules)
        )
        client.headers.clear()  # no python-httpx User-Agent, Accept, Connection
        return client

    async def send(self, request: Request, authorization: str | None) -> Response:
        assert self._open, "use the transport inside `async with`"
        headers = dict(request.headers)
        headers["Accept-Encoding"] = ACCEPT_ENCODING
        if authorization is not None:
            headers["Authorization"] = authorization
        sent_at = time.time()
        start = time.perf_counter()
        # make_event refuses such values; an Event built by hand must not raise in h2.
        if any(header_problem(value) is not None for value in headers.values()):
            return failed(sent_at, start, ErrorKind.REQUEST, "a header value cannot be sent")
        try:
            group, via = self._group(request.url)
        except httpx.InvalidURL as exc:
            return failed(sent_at, start, ErrorKind.REQUEST, f"cannot send: {exc}")
        busy = group.busy
        index = busy.index(min(busy)) if len(busy) > 1 else 0
        busy[index] += 1
        client = group.clients[index]
        hook(client)  # a new connection since the last call: give it the hook
        try:
            async with asyncio.timeout(self._timeout):
                status, body, retry_after = await self._resending(client, request.url, headers)
        except TimeoutError:
            reset_abandoned(client)
            return failed(sent_at, start, ErrorKind.TIMEOUT, f"no answer within {self._timeout:g}s")
        except _BodyFailed as exc:
            reset_abandoned(client)
            return failed(sent_at, start, exc.kind, exc.message, exc.status)
        except (httpx.HTTPError, httpx.InvalidURL, h2.exceptions.ProtocolError, OSError) as exc:
            # (InvalidURL is not an HTTPError: a query past httpx's 65,536 characters)
            reset_abandoned(client)
            return failed(sent_at, start, *_failure(exc, request.url, via))
        finally:
            busy[index] -= 1
        if status == 407 and via is not None:  # a plain-http call the proxy refused
            return failed(sent_at, start, *refusal(via, 407, "", ""))
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Response(status, body, sent_at, latency_ms, retry_after=retry_after)

    async def _resending(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None]:
        """`_exchange`, sent again while the server refuses it unprocessed (module rules)."""
        free, idle, shed = self._concurrency + 1, _IDLE_GOAWAYS, _REFUSED_RESENDS
        pause = _REFUSED_PAUSE_S
        while True:
            stream = _Stream(client)
            try:
                return await self._exchange(client, url, headers, stream)
            except (httpx.RemoteProtocolError, httpx.LocalProtocolError, httpx.WriteError) as exc:
                refused = "unsent" if stream.unsent else _unprocessed(exc, stream.id)
                spent = (refused == "idle" and idle == 0) or (refused == "refused" and shed == 0)
                if refused is None or free == 0 or spent:
                    raise
                free -= 1
                idle -= refused == "idle"
                shed -= refused == "refused"
                reset_abandoned(client)
                hook(client)
                if refused == "refused":  # the server sheds load: not at once, not faster
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, _REFUSED_PAUSE_MAX_S)

    async def _exchange(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str], stream: _Stream
    ) -> tuple[int, bytes, str | None]:
        # Values in UTF-8, as http1 sends them (httpx would encode a str in ASCII, and
        # raise on `--header 'X-Team: é'` or an event's non-ASCII user-agent).
        raw = [(name.encode("ascii"), value.encode()) for name, value in headers.items()]
        deadline = asyncio.get_running_loop().time() + self._timeout  # send's, near enough
        built = client.build_request("GET", url, headers=raw, extensions={"trace": stream.trace})
        response = await client.send(built, stream=True)
        try:
            status = response.status_code
            coding = response.headers.get("Content-Encoding")
            async with _raw_chunks(response) as chunks:
                try:
                    body = await read_body(chunks, coding, self._max_body, deadline)
                except BodyError as exc:
                    # The rest is still coming: the hooked connection resets the stream
                    # once it is closed, below.
                    hook(client)
                    if exc.kind == ErrorKind.TIMEOUT:
                        raise TimeoutError from None  # send's timeout record
                    kept = status if exc.kind == ErrorKind.TOO_LARGE else None
                    raise _BodyFailed(exc.kind, exc.message, kept) from None
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    # The answer began and was cut short (reset, GOAWAY, connection
                    # closed): a payload failure, as with http1, whatever the words.
                    message = f"incomplete response body: {_ended(exc)}"
                    raise _BodyFailed(ErrorKind.PAYLOAD, message, None) from None
            return status, body, response.headers.get("Retry-After")
        finally:
            await response.aclose()


_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True)
class _Group:
    """The clients of one proxy route, and the calls each has in flight."""

    clients: list[httpx.AsyncClient]
    busy: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.busy = [0] * len(self.clients)


#: A REFUSED_STREAM is sent again after this pause, doubling up to the max: the server
#: is shedding load (10 events at --rate 5 against one refusing every stream sent 660
#: requests in 1.9 s when they went again at once).
_REFUSED_PAUSE_S = 0.05
_REFUSED_PAUSE_MAX_S = 1.0
#: ... at most this many times (0.35 s of pauses): then it is `disconnected`, and the
#: engine's own retries (counted in attempts, spaced by the backoff, under --rate) follow.
_REFUSED_RESENDS = 3
#: Free resends after a GOAWAY that took no stream (last-stream-id 0): such a server may
#: refuse every call, and the engine's own retries (counted, spaced) take over.
_IDLE_GOAWAYS = 2


@dataclass(slots=True)
class _Stream:
    """The HTTP/2 stream a call to `client` was given, told by httpcore's trace hook
    (None: none yet, or an HTTP/1.1 connection)."""

    client: httpx.AsyncClient
    id: int | None = None
    #: Its headers never reached the server: h2 refused them (the connection had closed:
    #: a protocol error on another stream, a GOAWAY not yet read) or their write failed.
    unsent: bool = False

    async def trace(self, name: str, info: dict[str, object]) -> None:
        if name == "http2.send_request_headers.failed":
            error = info.get("exception")
            self.unsent = isinstance(error, h2.exceptions.ProtocolError | httpcore.WriteError)
        elif name == "http2.send_request_headers.started":
            stream_id = info.get("stream_id")
            self.id = stream_id if isinstance(stream_id, int) else None
            # A new connection is hooked by its first stream, before any GOAWAY can
            # come (its first burst would not reach the next call's hook in time).
            hook(self.client)
        elif name == "http11.send_request_headers.started":
            hook(self.client)  # HTTP/1.1 (no h2): hooked before its first answer is read


def _unprocessed(exc: Exception, stream_id: int | None) -> str | None:
    """How the server refused a call it did not process ("refused": REFUSED_STREAM,
    "goaway": above a GOAWAY's last-stream-id, "idle": a GOAWAY that took no stream), or
    None: it may have been processed (RFC 9113 §8.7)."""
    inner: BaseException | None = exc
    for _ in range(3):
        event = inner.args[0] if inner is not None and inner.args else None
        if isinstance(event, h2.events.StreamReset):
            return "refused" if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM else None
        if isinstance(event, h2.events.ConnectionTerminated):
            last = event.last_stream_id or 0
            if stream_id is not None and stream_id <= last:
                return None
            return "goaway" if last else "idle"
        inner = inner and (inner.__cause__ or inner.__context__)
    return None


class _BodyFailed(Exception):
    """A BodyError with the status to keep (too_large) or none (payload, protocol)."""

    def __init__(self, kind: str, message: str, status: int | None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


class _Chunks:
    """What engine.net.bodies reads: `readany()`, b"" at the end."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def readany(self) -> bytes:
        return await anext(self._chunks, b"")


@contextlib.asynccontextmanager
async def _raw_chunks(response: httpx.Response) -> AsyncIterator[_Chunks]:
    chunks = response.aiter_raw()
    try:
        yield _Chunks(chunks)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]  # an async generator


def _failure(exc: Exception, url: str, via: ProxyURL | None) -> tuple[str, str]:
    """The error kind and one-line message of a call that got no usable answer."""
    text = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, httpx.ProxyError) and via is not None:  # CONNECT answered non-2xx
        status, _, reason = text.partition(" ")
        target = _where(url)
        return refusal(via, int(status) if status.isdigit() else 502, reason, target)
    # Any exception: a TLS 1.3 server's alert comes on the first read, as a bare SSLError.
    if (failure := tls_failure(exc, _where(url))) is not None:
        return ErrorKind.TLS, failure
    if isinstance(exc, httpx.ConnectError):
        if via is not None:
            return ErrorKind.CONNECT, unreachable(via, text)
        return ErrorKind.CONNECT, f"cannot connect to {_where(url)}: {text}"
    if isinstance(exc, httpx.TimeoutException):  # not armed (module rules); kept for safety
        return ErrorKind.TIMEOUT, f"timed out: {text}"
    if isinstance(exc, httpx.RemoteProtocolError):
        # Before any answer (one cut short is _exchange's payload failure): a connection
        # that ended (EOF, GOAWAY) or a stream the server reset.
        lowered = text.lower()
        if "disconnected" in lowered or "connectionterminated" in lowered:
            return ErrorKind.DISCONNECTED, "server closed the connection without answering"
        if "streamreset" in lowered:
            return ErrorKind.DISCONNECTED, f"no answer: {_ended(exc)}"
        if "peer closed connection" in lowered or "incomplete" in lowered:
            return ErrorKind.PAYLOAD, f"incomplete response body: {_unquoted(text)}"
        return ErrorKind.PROTOCOL, f"malformed HTTP response: {_unquoted(text)}"
    if isinstance(exc, httpx.LocalProtocolError | h2.exceptions.ProtocolError):
        return ErrorKind.PROTOCOL, f"HTTP/2 protocol error: {_unquoted(text)}"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return ErrorKind.NETWORK, f"network error: {text}"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return ErrorKind.REQUEST, f"cannot send: {text}"
    if isinstance(exc, OSError):
        return ErrorKind.NETWORK, f"network error: {one_line(exc.strerror or text)}"
    return ErrorKind.NETWORK, f"{type(exc).__name__}: {text}"


def _ended(exc: Exception) -> str:
    """How an exchange ended early, in words: h2's event (a stream reset, a GOAWAY) from
    httpcore's error behind httpx's, else the error's own text."""
    inner: BaseException | None = exc
    for _ in range(3):
        event = inner.args[0] if inner is not None and inner.args else None
        code = getattr(getattr(event, "error_code", None), "name", None)
        if isinstance(event, h2.events.StreamReset):
            return f"the server reset the stream ({code})"
        if isinstance(event, h2.events.ConnectionTerminated):
            return f"the server closed the connection (GOAWAY {code})"
        inner = inner and (inner.__cause__ or inner.__context__)
    text = one_line(str(exc))
    return "the server closed the connection" if text == "Server disconnected" else _unquoted(text)


# h11 and h2 quote the server's bytes with repr(): dropped (net/outcome.unquoted); h11's
# two commonest read as the http1 client says them.
_H11_WORDS = {"illegal status line": NOT_A_STATUS, "illegal header line": "Invalid header token"}


def _unquoted(text: str) -> str:
    """`text` (one line) without a library's quote of the server's bytes."""
    said = unquoted(text)
    return _H11_WORDS.get(said, said) or "an answer that is not HTTP"


def _where(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "the endpoint"
    return f"{parsed.host}:{parsed.port or _PORTS.get(parsed.scheme, 0)}"
