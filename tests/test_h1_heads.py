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
