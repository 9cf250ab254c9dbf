"""engine.net.http1 (the lean HTTP/1.1 client) against real servers on 127.0.0.1.

Two kinds of server: aiohttp.web for ordinary answers, and a raw `asyncio.start_server`
(`RawServer`) for what aiohttp.web cannot produce on the wire: resets, truncated bodies,
garbage, answers that never come, counted connections. Where both clients should agree,
the test runs over `Http1Transport` and `SessionTransport` alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from web_app import serving

from engine.core.query import Request
from engine.net.http1 import Answer, Http1Client, HttpError
from engine.net.session_client import SessionTransport
from engine.net.transport import Http1Transport, Response, open_transport

CLIENTS = [pytest.param("http1", id="http1"), pytest.param("session", id="session")]


# --- a raw server: counts connections, records request heads, scripted per connection ---


@dataclass(eq=False)
class Conn:
    """One accepted connection, handed to the handler."""

    server: RawServer
    index: int  # 0 for the first connection the server accepted, 1 for the next...
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: int = 0

    async def read_request(self) -> bytes | None:
        """The next request head (recorded on the server), or None at EOF / reset."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        self.requests += 1
        self.server.requests.append((self.index, head))
        return head

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def wait_eof(self) -> None:
        """Hold the connection open (answering nothing) until the client goes away."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Conn], Awaitable[None]]


@dataclass(eq=False)
class RawServer:
    handler: Handler
    port: int = 0
    accepted: int = 0
    open: int = 0
    max_open: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    raw_bytes: bytearray = field(default_factory=bytearray)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn = Conn(self, self.accepted, reader, writer)
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.CancelledError):
            # Cancelled only at shutdown (`raw_server` exit); ending quietly keeps
            # Python 3.11's stream callback from logging the cancelled task as an error.
            pass
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self.tasks.discard(task)


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    raw = RawServer(handler)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()
        for task in list(raw.tasks):
            task.cancel()
        await asyncio.gather(*raw.tasks, return_exceptions=True)
        await server.wait_closed()


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    """Wait until `check()` holds (the server noticing a close); fail after `within` s."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def http_answer(
    body: bytes = b"ok", status: str = "200 OK", headers: tuple[str, ...] = ()
) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def keep_alive(answer: bytes = b"", *, delay: float = 0.0) -> Handler:
    """Answer every request on the connection with `answer` (default: 200 "ok")."""
    data = answer or http_answer()

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            server = conn.server
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            if delay:
                await asyncio.sleep(delay)
            server.in_flight -= 1
            conn.write(data)

    return handler


def once(data: bytes, *, then_close: bool = True) -> Handler:
    """Answer the first request with raw `data`, then close (FIN)."""

    async def handler(conn: Conn) -> None:
        if await conn.read_request() is None:
            return
        conn.write(data)
        await conn.writer.drain()
        if not then_close:
            await conn.wait_eof()

    return handler


@contextlib.asynccontextmanager
async def client(*, limit: int = 4, seconds: float = 5.0) -> AsyncIterator[Http1Client]:
    c = Http1Client(limit=limit, timeout=seconds)
    try:
        yield c
    finally:
        c.close()


async def fails(
    c: Http1Client,
    url: str,
    headers: dict[str, str] | None = None,
    authorization: str | None = None,
) -> HttpError:
    with pytest.raises(HttpError) as info:
        await c.get(url, headers or {}, authorization)
    error = info.value
    assert error.message == str(error)
    assert "\n" not in error.message
    assert "\r" not in error.message
    assert "Traceback" not in error.message
    return error


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- an aiohttp.web server for ordinary answers, used by both clients ---


async def _chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b"first,", b"second,", b"x" * 5000, b",last"):
        await resp.write(part)
    await resp.write_eof()
    return resp


async def _echo(request: web.Request) -> web.Response:
    head = {"path_qs": request.raw_path, "headers": {str(k): v for k, v in request.headers.items()}}
    return web.Response(body=orjson.dumps(head), content_type="application/json")


def _web_app() -> web.Application:
    app = web.Application()
    routes = [
        web.get("/ok", _answer(200, b"hello world")),
        web.get("/empty", _answer(204, b"")),
        web.get("/missing", _answer(404, b"no such thing")),
        web.get("/busy", _answer(429, b"slow down", {"Retry-After": "7"})),
        web.get("/down", _answer(503, b'{"error":"maintenance"}')),
        web.get("/binary", _answer(200, bytes(range(256)) * 64)),
        web.get("/chunked", _chunked),
        web.get("/", _echo),
        web.get("/echo", _echo),
    ]
    app.add_routes(routes)
    return app


def _answer(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body or None, headers=headers)

    return handle


@pytest.fixture
async def web_base() -> AsyncIterator[str]:
    async with serving(_web_app()) as base:
        yield base


async def send(
    name: str, url: str, headers: dict[str, str] | None = None, *, seconds: float = 5.0
) -> Response:
    """One call through the transport `name` (http1 or session), opened and closed here."""
    async with open_transport(concurrency=4, timeout=seconds, client=name) as transport:
        return await transport.send(Request(url, headers or {}), "Bearer t0ken")


# --- plain answers (both clients) ---


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
@pytest.mark.parametrize(
    ("path", "status", "body", "retry_after"),
    [
        pytest.param("/ok", 200, b"hello world", None, id="200"),
        pytest.param("/empty", 204, b"", None, id="204"),
        pytest.param("/missing", 404, b"no such thing", None, id="404"),
        pytest.param("/busy", 429, b"slow down", "7", id="429-retry-after"),
        pytest.param("/down", 503, b'{"error":"maintenance"}', None, id="503-body"),
        pytest.param("/binary", 200, bytes(range(256)) * 64, None, id="binary-16k"),
        pytest.param(
            "/chunked", 200, b"first,second," + b"x" * 5000 + b",last", None, id="chunked"
        ),
    ],
)
async def test_status_body_and_retry_after(
    web_base: str, name: str, path: str, status: int, body: bytes, retry_after: str | None
) -> None:
    resp = await send(name, web_base + path)
    assert resp.error is None
    assert resp.error_kind is None
    assert resp.status == status
    assert resp.body == body
    assert resp.retry_after == retry_after


@pytest.mark.anyio
async def test_open_transport_picks_the_client() -> None:
    assert isinstance(open_transport(concurrency=1, timeout=1.0), Http1Transport)
    assert isinstance(open_transport(concurrency=1, timeout=1.0, client="http1"), Http1Transport)
    assert isinstance(
        open_transport(concurrency=1, timeout=1.0, client="session"), SessionTransport
    )
    with pytest.raises(ValueError, match="unknown HTTP client"):
        open_transport(concurrency=1, timeout=1.0, client="curl")


@pytest.mark.anyio
async def test_answer_carries_headers(web_base: str) -> None:
    async with client() as c:
        answer = await c.get(web_base + "/busy", {})
    assert isinstance(answer, Answer)
    assert answer.status == 429
    assert answer.headers["retry-after"] == "7"


# --- bodies: encodings, chunking, EOF-delimited ---


_TEXT = b'{"products":[' + b'{"id":"p1","score":0.5},' * 200 + b'{"id":"end"}]}'


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(
            http_answer(gzip.compress(_TEXT), headers=("Content-Encoding: gzip",)), id="gzip"
        ),
        pytest.param(
            http_answer(zlib.compress(_TEXT), headers=("Content-Encoding: deflate",)), id="deflate"
        ),
        pytest.param(
            http_answer(_raw_deflate(_TEXT), headers=("Content-Encoding: deflate",)),
            id="raw-deflate",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
            + b"".join(
                f"{len(part):x}\r\n".encode() + part + b"\r\n"
                for part in (gzip.compress(_TEXT)[:40], gzip.compress(_TEXT)[40:])
            )
            + b"0\r\n\r\n",
            id="gzip-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\n"
            + _TEXT[:5]
            + b"\r\n"
            + f"{len(_TEXT) - 5:X}\r\n".encode()
            + _TEXT[5:]
            + b"\r\n"
            b"0\r\nX-Trailer: yes\r\n\r\n",
            id="chunked-extension-trailer",
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\n\r\n" + _TEXT, id="http10-until-eof"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + _TEXT, id="http11-close-until-eof"
        ),
    ],
)
async def test_body_framings_and_encodings(name: str, wire: bytes) -> None:
    async with raw_server(once(wire)) as server:
        resp = await send(name, server.base + "/x")
    assert resp.error is None, resp.error
    assert resp.status == 200
    assert resp.body == _TEXT


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_100_continue_then_200(name: str) -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" + http_answer(b"after continue")
    async with raw_server(once(wire, then_close=False)) as server:
        resp = await send(name, server.base + "/x")
    assert (resp.status, resp.body, resp.error) == (200, b"after continue", None)


@pytest.mark.anyio
async def test_eof_delimited_bodies_are_not_reused() -> None:
    """Three GETs to a server that ends each body by closing: three connections, all fine."""
    async with raw_server(once(b"HTTP/1.0 200 OK\r\n\r\nbye")) as server, client() as c:
        for _ in range(3):
            answer = await c.get(server.base + "/", {})
            assert (answer.status, answer.body) == (200, b"bye")
        assert server.accepted == 3


# --- keep-alive and the pool ---


@pytest.mark.anyio
async def test_keep_alive_reuses_one_connection() -> None:
    async with raw_server(keep_alive(http_answer(b"same"))) as server, client() as c:
        for i in range(25):
            answer = await c.get(f"{server.base}/n?i={i}", {})
            assert (answer.status, answer.body) == (200, b"same")
        assert server.accepted == 1
        assert len(server.requests) == 25
        assert [head.split(b" ")[1] for _, head in server.requests][-1] == b"/n?i=24"


@pytest.mark.anyio
async def test_connection_close_answers_are_not_reused() -> None:
    answer = http_answer(b"closing", headers=("Connection: close",))
    # The server *keeps* the socket open after a `Connection: close` answer: the client
    # must still not send a second request on it.
    async with raw_server(once(answer, then_close=False)) as server, client() as c:
        for _ in range(4):
            got = await c.get(server.base + "/", {})
            assert (got.status, got.body) == (200, b"closing")
        assert server.accepted == 4
        assert [index for index, _ in server.requests] == [0, 1, 2, 3]


@pytest.mark.anyio
async def test_pool_limit_bounds_open_connections() -> None:
    async with raw_server(keep_alive(http_answer(b"slow"), delay=0.05)) as server:
        async with client(limit=2) as c:
            answers = await asyncio.gather(*(c.get(f"{server.base}/?i={i}", {}) for i in range(10)))
            assert [a.body for a in answers] == [b"slow"] * 10
            assert len(server.requests) == 10
            assert server.max_open <= 2, f"{server.max_open} connections open at once"
            assert server.max_in_flight <= 2
            assert server.accepted == 2
        await eventually(lambda: server.open == 0)


@pytest.mark.anyio
async def test_pool_limit_with_connection_close_answers() -> None:
    """Connections that close after each answer free their slot; never more than limit."""
    answer = http_answer(b"one-shot", headers=("Connection: close",))

    async def handler(conn: Conn) -> None:
        if await conn.read_request() is None:
            return
        await asyncio.sleep(0.02)
        conn.write(answer)

    async with raw_server(handler) as server, client(limit=3) as c:
        answers = await asyncio.gather(*(c.get(server.base + "/", {}) for _ in range(12)))
        assert {a.body for a in answers} == {b"one-shot"}
        assert server.accepted == 12
        assert server.max_open <= 3, f"{server.max_open} connections open at once"


@pytest.mark.anyio
async def test_close_closes_connections_server_side() -> None:
    async with raw_server(keep_alive()) as server:
        c = Http1Client(limit=3, timeout=5.0)
        await asyncio.gather(*(c.get(server.base + "/", {}) for _ in range(3)))
        assert server.open >= 1
        c.close()
        await eventually(lambda: server.open == 0)
        assert server.accepted == server.max_open


# --- dropped connections: retried once only when an idle one was stale ---


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_stale_idle_connection_is_resent_once(how: str) -> None:
    """The server answers once, then drops the kept-alive connection at the next request."""

    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await conn.read_request()
            conn.write(http_answer(b"first"))
            await conn.read_request()  # the second GET arrives on the stale connection
            if how == "reset":
                conn.reset()
            return
        await keep_alive(http_answer(b"fresh"))(conn)

    async with raw_server(handler) as server, client() as c:
        assert (await c.get(server.base + "/a", {})).body == b"first"
        answer = await c.get(server.base + "/b", {})
        assert (answer.status, answer.body) == (200, b"fresh")
        assert server.accepted == 2
        assert [index for index, _ in server.requests] == [0, 0, 1]


@pytest.mark.anyio
async def test_server_closing_idle_connection_between_calls() -> None:
    """An idle connection the server closed a while ago: the next GET just works."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        conn.write(http_answer(b"bye for now"))  # keep-alive answer, but then a close

    async with raw_server(handler) as server, client() as c:
        for _ in range(3):
            assert (await c.get(server.base + "/", {})).body == b"bye for now"
            await eventually(lambda: server.open == 0)
        assert server.accepted == 3


@pytest.mark.anyio
async def test_fresh_connection_dropped_is_not_retried() -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()  # and close without a word

    async with raw_server(handler) as server, client() as c:
        error = await fails(c, server.base + "/once")
        assert error.kind == "disconnected"
        assert len(server.requests) == 1, "a GET on a fresh connection must not be resent"
        assert server.accepted == 1


@pytest.mark.anyio
async def test_stale_connection_then_fresh_drop_is_sent_twice_at_most() -> None:
    """Stale idle connection, resent once; the fresh one drops too -> an error, not a loop."""

    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await conn.read_request()
            conn.write(http_answer())
            await conn.read_request()
            return
        await conn.read_request()

    async with raw_server(handler) as server, client() as c:
        await c.get(server.base + "/", {})
        error = await fails(c, server.base + "/")
        assert error.kind == "disconnected"
        assert len(server.requests) == 3
        assert server.accepted == 2


@pytest.mark.anyio
async def test_reset_mid_response() -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await conn.read_request()
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
            await conn.writer.drain()
            await asyncio.sleep(0.05)
            conn.reset()
            return
        await keep_alive(http_answer(b"recovered"))(conn)

    async with raw_server(handler) as server, client() as c:
        error = await fails(c, server.base + "/")
        assert error.kind in {"payload", "network", "disconnected"}
        answer = await c.get(server.base + "/", {})
        assert (answer.status, answer.body) == (200, b"recovered")
        assert server.accepted == 2
        assert len(server.requests) == 2  # the broken GET was not resent


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_truncated_body_is_payload_error(name: str) -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"only ten b"
    async with raw_server(once(wire)) as server:
        resp = await send(name, server.base + "/")
    assert resp.status is None
    assert resp.body == b""
    assert resp.error_kind == "payload", resp.error
    assert resp.error is not None
    assert "\n" not in resp.error


@pytest.mark.anyio
async def test_truncated_chunked_body_is_payload_error() -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly eight"
    async with raw_server(once(wire)) as server, client() as c:
        assert (await fails(c, server.base + "/")).kind == "payload"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"garbage garbage\r\n\r\n", id="garbage"),
        pytest.param(b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", id="non-numeric-status"),
        pytest.param(b"HTTP/9 200 OK\r\nContent-Length: 0\r\n\r\n", id="bad-version"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            id="two-content-lengths",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nbroken header line\r\n\r\n", id="bad-header"),
        # Three digits, but no status: not a 1xx to wait past (the call timed out)
        pytest.param(b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", id="status-000"),
        pytest.param(b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok", id="status-099"),
    ],
)
async def test_malformed_answers_are_protocol_errors(wire: bytes) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await once(wire, then_close=False)(conn)
            return
        await keep_alive(http_answer(b"sane"))(conn)

    async with raw_server(handler) as server, client() as c:
        error = await fails(c, server.base + "/")
        assert error.kind == "protocol", error.message
        assert error.message.startswith("malformed HTTP response")
        # The broken connection is dropped; the next call gets a fresh one.
        assert (await c.get(server.base + "/", {})).body == b"sane"
        assert server.accepted == 2


# --- timeouts ---


@pytest.mark.anyio
@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"", id="no-headers"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10, id="slow-body"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", id="slow-chunks"
        ),
    ],
)
async def test_timeout_drops_the_connection(first: bytes) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await conn.read_request()
            conn.write(first)
            await conn.wait_eof()  # never finishes the answer
            return
        await keep_alive(http_answer(b"later"))(conn)

    async with raw_server(handler) as server, client(seconds=0.3) as c:
        start = time.monotonic()
        error = await fails(c, server.base + "/")
        elapsed = time.monotonic() - start
        assert error.kind == "timeout"
        assert "0.3s" in error.message
        assert 0.25 <= elapsed < 5.0
        # The half-read connection is not reused: the next call opens a new one.
        assert (await c.get(server.base + "/", {})).body == b"later"
        assert server.accepted == 2
        assert [index for index, _ in server.requests] == [0, 1]


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_timeout_through_the_transport(name: str) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.wait_eof()

    async with raw_server(handler) as server:
        start = time.monotonic()
        resp = await send(name, server.base + "/", seconds=0.3)
        assert time.monotonic() - start < 5.0
    assert resp.status is None
    assert resp.error_kind == "timeout"
    assert resp.error == "no answer within 0.3s"


@pytest.mark.anyio
async def test_waiting_for_a_pool_slot_counts_against_the_deadline() -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.wait_eof()

    async with raw_server(handler) as server, client(limit=1, seconds=0.3) as c:
        start = time.monotonic()
        results = await asyncio.gather(
            *(c.get(server.base + "/", {}) for _ in range(3)), return_exceptions=True
        )
        assert time.monotonic() - start < 5.0
        assert all(isinstance(r, HttpError) and r.kind == "timeout" for r in results), results
        assert server.max_open == 1


# --- connecting ---


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_connection_refused(name: str) -> None:
    port = free_port()
    resp = await send(name, f"http://127.0.0.1:{port}/x")
    assert resp.status is None
    assert resp.error_kind == "connect"
    assert resp.error is not None
    assert f"127.0.0.1:{port}" in resp.error
    assert "\n" not in resp.error


@pytest.mark.anyio
async def test_connection_refused_names_host_and_port() -> None:
    port = free_port()
    async with client() as c:
        error = await fails(c, f"http://127.0.0.1:{port}/x?y=1")
    assert error.kind == "connect"
    assert error.message.startswith(f"cannot connect to 127.0.0.1:{port}: ")


@pytest.mark.anyio
async def test_https_to_a_plain_http_server(web_base: str) -> None:
    async with client(seconds=3.0) as c:
        error = await fails(c, web_base.replace("http://", "https://") + "/ok")
    assert error.kind in {"connect", "network"}, error.message
    assert web_base.removeprefix("http://") in error.message


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "http:///x", "127.0.0.1:80/x"])
async def test_not_an_http_url(url: str) -> None:
    async with client() as c:
        assert (await fails(c, url)).kind == "request"


# --- the request on the wire ---


@pytest.mark.anyio
async def test_request_head_on_the_wire() -> None:
    async with raw_server(keep_alive()) as server, client() as c:
        query = "q=a%20b+c&slash=%2F&plus=%2B&pct=%25&u=%C3%A9&empty="
        await c.get(
            f"{server.base}/v1/del%2Fivery/x?{query}",
            {"User-Agent": "adbatch/test", "X-Trace": "abc 123"},
            authorization="Bearer tok.en",
        )
    ((_index, head),) = server.requests
    lines = head.decode().split("\r\n")
    assert lines[0] == f"GET /v1/del%2Fivery/x?{query} HTTP/1.1"
    assert lines[-2:] == ["", ""]
    fields = [tuple(line.split(": ", 1)) for line in lines[1:-2]]
    assert ("Host", f"127.0.0.1:{server.port}") in fields
    assert ("User-Agent", "adbatch/test") in fields
    assert ("X-Trace", "abc 123") in fields
    assert ("Authorization", "Bearer tok.en") in fields
    assert ("Accept-Encoding", "gzip, deflate") in fields
    names = [name.lower() for name, _ in fields]
    assert len(names) == len(set(names)), f"a header sent twice: {fields}"
    assert "content-length" not in names
    assert "transfer-encoding" not in names


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
@pytest.mark.parametrize(
    ("suffix", "sent"),
    [
        pytest.param("?x=1", "/?x=1", id="no-path"),
        pytest.param("/?x=1", "/?x=1", id="slash"),
        pytest.param("", "/", id="bare"),
        pytest.param("/echo?a=%3D%26&b=c%20d", "/echo?a=%3D%26&b=c%20d", id="encoded-kept"),
    ],
)
async def test_path_and_query_as_given(web_base: str, name: str, suffix: str, sent: str) -> None:
    resp = await send(name, web_base + suffix, {"User-Agent": "ua"})
    assert resp.status == 200, resp.error
    assert orjson.loads(resp.body)["path_qs"] == sent


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_non_ascii_header_value_goes_as_utf8(name: str) -> None:
    async with raw_server(keep_alive()) as server:
        resp = await send(name, server.base + "/", {"User-Agent": "adbatch/é ü"})
    assert resp.status == 200, resp.error
    ((_, head),) = server.requests
    assert b"\r\nUser-Agent: adbatch/\xc3\xa9 \xc3\xbc\r\n" in head


@pytest.mark.anyio
async def test_host_header_leaves_out_default_port() -> None:
    # Port 80 is not ours to bind; what matters is the header the pool would send.
    async with client() as c:
        error = await fails(c, f"http://127.0.0.1:{free_port()}/")
        assert error.kind == "connect"
    c2 = Http1Client(limit=1, timeout=1.0)
    try:
        target = c2._target("http://127.0.0.1/x")
        assert target.pool.head_start.startswith("Host: 127.0.0.1\r\n")
        assert c2._target("http://[::1]:8080/x").pool.head_start.startswith("Host: [::1]:8080\r\n")
    finally:
        c2.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("suffix", "headers", "authorization"),
    [
        pytest.param("/?a=1%0D%0A", {"X-Bad": "v\r\nX-Injected: 1"}, None, id="value-crlf"),
        pytest.param("/?a=1", {"X-Bad": "v\nX-Injected: 1"}, None, id="value-lf"),
        pytest.param("/?a=1", {"X-Bad": "v\rX-Injected: 1"}, None, id="value-cr"),
        pytest.param("/?a=1", {"X-Bad\r\nX-Injected": "1"}, None, id="name-crlf"),
        pytest.param("/?a=1\r\nX-Injected: 1", {}, None, id="query-crlf"),
        pytest.param("/?a=1\nX-Injected: 1", {}, None, id="query-lf"),
        pytest.param("/?a=1", {}, "Bearer t\r\nX-Injected: 1", id="authorization-crlf"),
    ],
)
async def test_line_breaks_are_refused_before_sending(
    suffix: str, headers: dict[str, str], authorization: str | None
) -> None:
    async with raw_server(keep_alive()) as server, client() as c:
        # A fresh client: nothing at all may reach the server.
        error = await fails(c, server.base + suffix, headers=headers, authorization=authorization)
        assert error.kind == "request"
        assert server.accepted == 0
        # A warm connection: it is still clean for the next call.
        await c.get(server.base + "/ok", {})
        with pytest.raises(HttpError, match="line break"):
            await c.get(server.base + suffix, headers, authorization)
        await c.get(server.base + "/ok2", {})
        await eventually(lambda: len(server.requests) == 2)
        heads = [head for _, head in server.requests]
        assert all(b"X-Injected" not in head for head in heads)
        assert [h.split(b"\r\n")[0] for h in heads] == [b"GET /ok HTTP/1.1", b"GET /ok2 HTTP/1.1"]
        assert server.accepted == 1


@pytest.mark.anyio
async def test_line_break_through_the_transport_is_a_record() -> None:
    async with raw_server(keep_alive()) as server:
        resp = await send("http1", server.base + "/?a=1", {"X-Bad": "a\r\nb: c"})
        assert server.accepted == 0
    assert resp.status is None
    assert resp.error_kind == "request"


@pytest.mark.anyio
async def test_empty_query_is_kept() -> None:
    """`?` with nothing after it goes out as given (the session client drops it)."""
    async with raw_server(keep_alive()) as server, client() as c:
        await c.get(server.base + "/echo?", {})
    assert server.requests[0][1].startswith(b"GET /echo? HTTP/1.1\r\n")


@pytest.mark.anyio
async def test_waiter_cancelled_as_it_is_woken_passes_the_slot_on() -> None:
    """limit=1: A holds the connection, B and C wait. A's release wakes B; B is cancelled
    before it runs. C must still get the now idle connection, not sleep to its deadline."""
    async with raw_server(keep_alive(http_answer(b"x"), delay=0.05)) as server:
        async with client(limit=1, seconds=2.0) as c:
            waiting_b = asyncio.create_task(c.get(server.base + "/b", {}))
            waiting_c = asyncio.create_task(c.get(server.base + "/c", {}))
            # A runs in this task: its release (and B's wake-up) happens in the same step
            # in which the cancel below runs, before B's task gets to resume.
            assert (await c.get(server.base + "/a", {})).body == b"x"
            waiting_b.cancel()
            start = time.monotonic()
            assert (await waiting_c).body == b"x"
            assert time.monotonic() - start < 1.5, "C slept until its deadline"
            with pytest.raises(asyncio.CancelledError):
                await waiting_b
            assert server.accepted == 1
            assert [head.split(b" ")[1] for _, head in server.requests] == [b"/a", b"/c"]


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_transport_sends_authorization_and_headers(name: str) -> None:
    async with raw_server(keep_alive()) as server:
        resp = await send(name, server.base + "/d?k=v%26w", {"User-Agent": "adbatch/9"})
    assert resp.status == 200
    ((_, head),) = server.requests
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /d?k=v%26w HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert "Authorization: Bearer t0ken" in lines
    assert "User-Agent: adbatch/9" in lines


@pytest.mark.anyio
async def test_stray_answer_after_the_body_spoils_the_connection() -> None:
    """A 408 sent unasked right behind an answer must not become the next call's answer."""
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"

    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await once(http_answer(b"first") + stray, then_close=False)(conn)
            return
        await keep_alive(http_answer(b"second"))(conn)

    async with raw_server(handler) as server, client() as c:
        assert (await c.get(server.base + "/", {})).body == b"first"
        answer = await c.get(server.base + "/", {})
        assert (answer.status, answer.body) == (200, b"second")
        assert server.accepted == 2


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_garbage_after_the_body_fails_that_call_only(name: str) -> None:
    """Bytes past Content-Length fail the parse of that read (both clients alike); the
    connection is dropped and the next call gets a fresh one."""

    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await once(http_answer(b"first") + b"EXTRA BYTES", then_close=False)(conn)
            return
        await keep_alive(http_answer(b"second"))(conn)

    async with raw_server(handler) as server:
        async with open_transport(concurrency=2, timeout=5.0, client=name) as transport:
            first = await transport.send(Request(server.base + "/", {}), None)
            second = await transport.send(Request(server.base + "/", {}), None)
        assert server.accepted == 2
    assert first.status is None
    assert first.error_kind == ("protocol" if name == "http1" else "network")
    assert (second.status, second.body) == (200, b"second")
