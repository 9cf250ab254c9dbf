"""What engine/net/http2.py changes in httpcore's connection pool: private attributes,
each found with getattr (should httpcore rename them, the change is skipped, not a
crash), and its tunnel class, from a private module (there since httpcore 0.14).

Rules:
- `whole_writes`: writes that a cancel cannot cut (a deadline mid-write would corrupt
  the HTTP/2 connection for every call on it).
- `hook`, `reset_abandoned`: a stream given up on is reset (RST_STREAM) and the DATA it
  had received acknowledged, else h2 counts it open and its window is gone for good
  (httpcore 1.0 does not: encode/httpcore#943).
- `hook` also lets a connection read past a GOAWAY: the streams at or below its
  last-stream-id are being answered, and get their answers (h2 closes its state machine
  on a GOAWAY and refuses their frames, httpcore fails them unread: each such call was
  processed by the server, and lost).
- `hook` also reads each answer's `:status` itself: httpcore takes it with `int()` (a
  ValueError, a crash of the call, on `tok`) and as 200 when it is missing (it turns h2's
  header validation off). One that is not a status code (100-599) is a malformed answer,
  said in our words: never the bytes, which a server may make the token.
- `hook` drops an HTTP/1.1 connection (a server without h2) that holds bytes past the
  answer it just gave (a stray answer in the same write): h11 keeps them and would hand
  them to the next call on the connection as its answer.
- `whole_stream_limits`: a connection's stream limit that a cancel cannot break. httpcore
  sets it up by taking 99 of its 100 permits, one await each, in the first call on the
  connection: that call's deadline landing there left up to 98 too many, and the server's
  SETTINGS then released more than the limit holds ("semaphore released too many times"
  in the read: `internal` records). A permit free is now taken without an await, so the
  99 are taken at once.
- `shared_tunnels`: through a proxy, the calls that come while the first CONNECT tunnel
  opens wait for it, as they wait for a direct connection, instead of each opening a
  tunnel (and an HTTP/2 connection) of its own: one connection per 100 calls, as direct.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from typing import Any

import anyio
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import httpcore
import httpx
from httpcore._async import http2 as httpcore_http2
from httpcore._async.http_proxy import AsyncTunnelHTTPConnection
from httpcore._synchronization import AsyncSemaphore


def whole_writes(transport: httpx.AsyncHTTPTransport) -> None:
    """Give `transport`'s connections writes that a cancel cannot cut (module rules)."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.AsyncNetworkBackend):
        pool._network_backend = _WholeWritesBackend(backend)  # type: ignore[union-attr]


class _WholeWritesBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _WholeWrites(await self._inner.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _WholeWrites(await self._inner.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _WholeWrites(httpcore.AsyncNetworkStream):
    """A network stream whose writes finish even when the caller is cancelled.

    httpcore takes frames out of h2's buffer, and anyio's TLS stream takes the encrypted
    bytes out of its BIO, before the socket write's first await: a cancel there loses
    them, and the next frame corrupts the connection for every call on it (the server
    closes it). So each write runs in a task of its own, shielded, after the one before
    it (the order on the wire is kept); its caller may leave at once."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._last: asyncio.Future[None] | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        last = self._last = asyncio.ensure_future(self._write(self._last, buffer, timeout))
        last.add_done_callback(_retrieved)
        await asyncio.shield(last)

    async def _write(
        self,
        before: asyncio.Future[None] | None,
        buffer: bytes,
        timeout: float | None,  # noqa: ASYNC109 (httpcore's, passed on)
    ) -> None:
        if before is not None and not before.done():
            await asyncio.wait([before])
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
    ) -> httpcore.AsyncNetworkStream:
        return _WholeWrites(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def whole_stream_limits() -> None:
    """Give httpcore's HTTP/2 connections a stream limit that a cancel cannot break
    (module rules); once per process, for every such connection."""
    if getattr(httpcore_http2, "AsyncSemaphore", None) is AsyncSemaphore:
        httpcore_http2.AsyncSemaphore = _WholeSemaphore  # type: ignore[attr-defined]


class _WholeSemaphore(AsyncSemaphore):
    """httpcore's semaphore whose acquire takes a free permit without an await (anyio's
    fast_acquire): a run of acquires while permits are free cannot be cut by a cancel."""

    def setup(self) -> None:
        super().setup()
        if self._backend == "asyncio":
            self._anyio_semaphore = anyio.Semaphore(
                self._bound, max_value=self._bound, fast_acquire=True
            )


def _retrieved(task: asyncio.Future[None]) -> None:
    # A write whose caller left: its failure shows on the next read or write.
    if not task.cancelled():
        task.exception()


def _h2_connections(client: httpx.AsyncClient) -> list[Any]:
    """httpcore's HTTP/2 connections in `client`'s pool (private attributes: [] should
    they change)."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    found = []
    for pooled in getattr(pool, "connections", ()):
        conn = getattr(pooled, "_connection", None)
        if isinstance(getattr(conn, "_events", None), dict) and hasattr(conn, "_h2_state"):
            found.append(conn)
    return found


def hook(client: httpx.AsyncClient) -> None:
    """Make each HTTP/2 connection of `client` settle the streams it lets go of: reset
    one still open, and acknowledge the DATA it had received but nobody read (else that
    connection window is gone for good: after ~16 MiB of it, the connection stalls)."""
    for conn in _h2_connections(client):
        if getattr(conn, "_adbatch_hooked", False):
            continue
        state, events, closed = conn._h2_state, conn._events, conn._response_closed

        async def response_closed(
            *, stream_id: int, state: Any = state, events: Any = events, closed: Any = closed
        ) -> None:
            unread = sum(
                e.flow_controlled_length or 0
                for e in events.get(stream_id, ())
                if isinstance(e, h2.events.DataReceived)
            )
            _reset(state, stream_id)
            if unread:
                state.acknowledge_received_data(unread, stream_id)
            await closed(stream_id=stream_id)

        conn._response_closed = response_closed
        conn._adbatch_hooked = True
        _read_past_goaway(conn)
        _checked_status(conn)
    for conn in _h11_connections(client):
        _drop_leftovers(conn)


#: What the http1 client says of a status line that is not one.
NOT_A_STATUS = "Invalid status code"
_STATUS = re.compile(rb"[1-5][0-9][0-9]")


def _checked_status(conn: Any) -> None:
    """`conn` (httpcore's AsyncHTTP2Connection) takes an answer's status from exactly
    one `:status` of three digits, 100-599, else fails the call (module rules)."""
    if not hasattr(conn, "_receive_stream_event"):  # private: should it change, as before
        return

    async def receive_response(request: Any, stream_id: int) -> tuple[int, list[Any]]:
        while True:
            event = await conn._receive_stream_event(request, stream_id)
            if isinstance(event, h2.events.ResponseReceived):
                break
        fields = event.headers or []
        statuses = [value for name, value in fields if name == b":status"]
        if len(statuses) != 1 or not _STATUS.fullmatch(statuses[0]):
            raise httpcore.RemoteProtocolError(NOT_A_STATUS)
        return int(statuses[0]), [(k, v) for k, v in fields if not k.startswith(b":")]

    conn._receive_response = receive_response


def _h11_connections(client: httpx.AsyncClient) -> list[Any]:
    """httpcore's HTTP/1.1 connections in `client`'s pool, not yet hooked (direct, in a
    tunnel, or through a forwarding proxy: the innermost)."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    found = []
    for pooled in getattr(pool, "connections", ()):
        conn: Any = getattr(pooled, "_connection", None)
        for _ in range(3):
            if hasattr(conn, "_h11_state") or not hasattr(conn, "_connection"):
                break
            conn = conn._connection
        if hasattr(conn, "_h11_state") and not getattr(conn, "_adbatch_hooked", False):
            found.append(conn)
    return found


def _drop_leftovers(conn: Any) -> None:
    """Close `conn` (httpcore's AsyncHTTP11Connection) when an answer leaves bytes behind
    it, or the server's end of file (module rules). One that comes later, while the
    connection is idle, httpcore sees itself (a readable idle socket has expired)."""
    closed = getattr(conn, "_response_closed", None)
    if closed is None or not hasattr(conn, "aclose"):
        return

    async def response_closed() -> None:
        await closed()
        data, ended = getattr(conn._h11_state, "trailing_data", (b"", False))
        if conn.is_idle() and (data or ended):
            await conn.aclose()

    conn._response_closed = response_closed
    conn._adbatch_hooked = True


#: What a connection may still receive, and send, once a GOAWAY came: the frames of the
#: streams the server is answering, and their flow control. No new stream (SEND_HEADERS).
_AFTER_GOAWAY = {
    (h2.connection.ConnectionState.CLOSED, getattr(h2.connection.ConnectionInputs, name)): (
        None,
        h2.connection.ConnectionState.CLOSED,
    )
    for name in (
        "RECV_HEADERS", "RECV_DATA", "RECV_WINDOW_UPDATE", "RECV_RST_STREAM", "RECV_PING",
        "RECV_SETTINGS", "RECV_PRIORITY", "SEND_WINDOW_UPDATE", "SEND_RST_STREAM",
    )
}  # fmt: skip


_STREAM_EVENTS = (
    h2.events.ResponseReceived,
    h2.events.DataReceived,
    h2.events.StreamEnded,
    h2.events.StreamReset,
)


def _read_past_goaway(conn: Any) -> None:
    """Let `conn` (httpcore's AsyncHTTP2Connection) receive the answers of the streams
    a GOAWAY left it (module rules): its h2 state machine takes their frames, and a call
    waiting on such a stream reads on where httpcore would fail it."""
    machine: Any = getattr(conn._h2_state, "state_machine", None)
    needed = ("_receive_events", "_read_lock", "_read_incoming_data", "_write_outgoing_data",
              "_receive_remote_settings_change", "_connection_terminated")  # fmt: skip
    if not isinstance(getattr(machine, "_transitions", None), dict) or not all(
        hasattr(conn, name) for name in needed
    ):  # private attributes of h2 and httpcore: should they change, a GOAWAY fails as before
        return
    machine._transitions = {**machine._transitions, **_AFTER_GOAWAY}  # this one's only
    original = conn._receive_events

    def answering(stream_id: int | None) -> bool:
        ended = conn._connection_terminated
        return bool(ended is not None and stream_id and stream_id <= (ended.last_stream_id or 0))

    async def receive_events(request: Any, stream_id: int | None = None) -> None:
        if not answering(stream_id):
            try:
                return await original(request, stream_id)  # type: ignore[no-any-return]
            except httpcore.RemoteProtocolError as exc:
                # The GOAWAY came while this call waited for the read lock: httpcore
                # fails it there, before reading anything.
                ended = conn._connection_terminated
                if not (exc.args and exc.args[0] is ended and answering(stream_id)):
                    raise
        async with conn._read_lock:
            if not conn._events.get(stream_id):
                for event in await conn._read_incoming_data(request):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        await conn._receive_remote_settings_change(event)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        conn._connection_terminated = event  # a second, lower GOAWAY
                    elif isinstance(event, _STREAM_EVENTS) and event.stream_id in conn._events:
                        conn._events[event.stream_id].append(event)
        await conn._write_outgoing_data(request)
        return None

    conn._receive_events = receive_events


def reset_abandoned(client: httpx.AsyncClient) -> None:
    """Reset the streams httpcore let go of before `_hook` reached their connection (the
    first calls of a new one): h2 counts them open, httpcore no longer follows them (it
    adds the `_events` entry before it opens a stream, drops it when it lets go)."""
    for conn in _h2_connections(client):
        for stream_id in list(conn._h2_state.streams):
            if stream_id not in conn._events:
                _reset(conn._h2_state, stream_id)


def _reset(state: Any, stream_id: int) -> None:
    """RST_STREAM for a stream h2 counts open; queued, not flushed (the next write on the
    connection carries it: taking the write lock here could deadlock)."""
    stream = state.streams.get(stream_id)
    if stream is not None and stream.open:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            state.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)


def shared_tunnels(transport: httpx.AsyncHTTPTransport) -> None:
    """Let the calls to an origin share the CONNECT tunnel being opened (module rules):
    the tunnels `transport`'s proxy pool makes are `_SharedTunnel`s."""
    pool = getattr(transport, "_pool", None)
    create = getattr(pool, "create_connection", None)
    if not isinstance(pool, httpcore.AsyncHTTPProxy) or create is None:
        return

    def create_connection(origin: Any) -> Any:
        connection = create(origin)
        if type(connection) is AsyncTunnelHTTPConnection:
            connection.__class__ = _SharedTunnel
        return connection

    pool.create_connection = create_connection  # type: ignore[method-assign]


class _SharedTunnel(AsyncTunnelHTTPConnection):
    """A tunnel that takes calls while it opens, as httpcore's direct connection does
    when it may become HTTP/2: they wait for it (its connect lock), then go on as
    streams of the one HTTP/2 connection (an HTTP/1.1 one sends the extra calls back to
    the pool). httpcore's tunnel asks the proxy connection, which says no until it is
    open, so each call of the first burst opened a tunnel (`-c 64`: 64 connections).
    A tunnel whose opening failed (refused, TLS) takes no more calls."""

    _failed = False

    def is_available(self) -> bool:
        if not self._connected:
            return bool(self._http2) and not self._failed and not self._connection.is_closed()
        return bool(self._connection.is_available())

    async def handle_async_request(self, request: Any) -> Any:
        try:
            return await super().handle_async_request(request)
        except BaseException:
            if not self._connected:
                self._failed = True
            raise
