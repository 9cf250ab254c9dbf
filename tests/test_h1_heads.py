"""The http1 client's limits on an answer's head (issue 18's adversarial check: the
httptools client first read heads without any bound, where aiohttp's parser refused a
header line over 8190 bytes). A hostile or broken server's head is a `protocol` failure
at once, not memory that grows until the call's deadline."""

from __future__ import annotations

import asyncio

import pytest
from test_http1 import CLIENTS, Conn, client, fails, http_answer, keep_alive, once, raw_server

from engine.core.query import Request
from engine.net.h1conn import MAX_FIELD, MAX_HEAD
from engine.net.transport import open_transport


def _head_with(*headers: str) -> bytes:
    return http_answer(b"ok", headers=headers)


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_a_header_line_over_the_limit_is_a_protocol_failure(name: str) -> None:
    wire = _head_with("X-Big: " + "b" * 100_000)
    async with raw_server(once(wire, then_close=False)) as server:
        async with open_transport(concurrency=1, timeout=5.0, client=name) as transport:
            response = await transport.send(Request(server.base + "/", {}), None)
    assert response.status is None
    assert response.error_kind is not None
    if name == "http1":  # (aiohttp's session client names it a network error)
        assert response.error_kind == "protocol", response.error
        assert response.error == (
            f"malformed HTTP response: a header line longer than {MAX_FIELD} bytes"
        )


@pytest.mark.anyio
async def test_the_messages_name_the_limits() -> None:
    def first_then_sane(wire: bytes):  # type: ignore[no-untyped-def]
        async def handler(conn: Conn) -> None:
            if conn.index == 0:
                await once(wire, then_close=False)(conn)
                return
            await keep_alive(http_answer(b"sane"))(conn)

        return handler

    line = _head_with("X-Big: " + "b" * MAX_FIELD)
    many = _head_with(*(f"X-H{i}: " + "v" * 1000 for i in range(MAX_HEAD // 1000 + 2)))
    for wire, words in ((line, f"header line longer than {MAX_FIELD}"), (many, f"{MAX_HEAD}")):
        async with raw_server(first_then_sane(wire)) as server, client() as c:
            error = await fails(c, server.base + "/")
            assert error.kind == "protocol"
            assert error.message.startswith("malformed HTTP response")
            assert words in error.message
            # The broken connection is dropped; the next call gets a fresh one.
            assert (await c.get(server.base + "/", {})).body == b"sane"
            assert server.accepted == 2


@pytest.mark.anyio
async def test_heads_within_the_limits_pass() -> None:
    long = "7" * (MAX_FIELD - 100 - len("Retry-After: "))
    wire = _head_with(f"Retry-After: {long}", *(f"X-{i}: v" for i in range(500)))
    async with raw_server(keep_alive(wire)) as server, client() as c:
        answer = await c.get(server.base + "/", {})
    assert (answer.status, answer.body) == (200, b"ok")
    assert answer.headers["retry-after"] == long
    assert "x-1" not in answer.headers  # counted against the limits, not kept


@pytest.mark.anyio
async def test_a_head_that_never_ends_fails_at_the_limit_not_the_deadline() -> None:
    """A header value that keeps coming (1 MB every 10 ms): the call fails as soon as the
    head passes MAX_HEAD bytes, long before its 5 s deadline."""

    async def endless(conn: Conn) -> None:
        await conn.read_request()
        conn.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        try:
            for _ in range(500):
                conn.write(b"e" * 1_000_000)
                await conn.writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            return

    async with raw_server(endless) as server, client(seconds=5.0) as c:
        error = await fails(c, server.base + "/")
    assert error.kind == "protocol"  # not "timeout": the deadline did not end it
    assert str(MAX_HEAD) in error.message


# -- a chunked answer's trailer section: the head's limits --------------------------------


def _chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + body + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.anyio
@pytest.mark.parametrize("name", CLIENTS)
async def test_a_trailer_that_never_ends_fails_at_the_limit_not_the_deadline(name: str) -> None:
    """A trailer line that keeps coming (1 MB every 10 ms): refused as an endless head is,
    long before the 5 s deadline (it grew llhttp's buffers until the deadline)."""

    async def endless(conn: Conn) -> None:
        await conn.read_request()
        conn.write(_chunked(b"{}")[:-2] + b"X-Trailer: ")  # the last chunk, then a line
        try:
            for _ in range(500):
                conn.write(b"t" * 1_000_000)
                await conn.writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            return

    async with raw_server(endless) as server:
        async with open_transport(concurrency=1, timeout=5.0, client=name) as transport:
            response = await transport.send(Request(server.base + "/", {}), None)
    assert response.status is None
    assert response.error_kind != "timeout", response.error  # the deadline did not end it
    if name == "http1":  # (aiohttp's session client names it a network error)
        assert response.error_kind == "protocol"
        assert response.error == (
            f"malformed HTTP response: a trailer section longer than {MAX_HEAD} bytes"
        )


@pytest.mark.anyio
async def test_a_trailer_line_or_section_over_the_limits_is_refused() -> None:
    def first_then_sane(wire: bytes):  # type: ignore[no-untyped-def]
        async def handler(conn: Conn) -> None:
            if conn.index == 0:
                await once(wire, then_close=False)(conn)
                return
            await keep_alive(http_answer(b"sane"))(conn)

        return handler

    line = _chunked(b"{}", trailer=b"X-Big: " + b"b" * MAX_FIELD + b"\r\n")
    lines = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 1000) for i in range(MAX_HEAD // 1000 + 2))
    for wire, words in (
        (line, f"header line longer than {MAX_FIELD}"),
        (_chunked(b"{}", trailer=lines), f"trailer section longer than {MAX_HEAD}"),
    ):
        async with raw_server(first_then_sane(wire)) as server, client() as c:
            error = await fails(c, server.base + "/")
            assert error.kind == "protocol"
            assert words in error.message
            assert (await c.get(server.base + "/", {})).body == b"sane"


@pytest.mark.anyio
async def test_chunks_and_trailers_within_the_limits_pass() -> None:
    """Chunk framing is not trailer: 40,000 one-byte chunks (240 KB of framing) and a
    big chunk pass, and so do trailers of nearly the limit, keeping the body whole."""
    small = [b"%d" % (i % 10) for i in range(40_000)]
    big = b"B" * 300_000
    trailer = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 1000) for i in range(MAX_HEAD // 1100))
    wire = _chunked(*small, big, trailer=trailer)
    async with raw_server(keep_alive(wire)) as server, client() as c:
        answer = await c.get(server.base + "/", {})
        again = await c.get(server.base + "/", {})
    assert (answer.status, answer.body) == (200, b"".join(small) + big)
    assert again.body == answer.body
    assert server.accepted == 1  # kept alive: the answer ended where its trailers did
