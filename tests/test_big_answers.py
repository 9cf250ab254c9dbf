"""Big answers under the limit (issue 12 item 1): the call's deadline holds while a body
is inflated, the event loop keeps its turns, and peak memory stays within the README's
bound. Real servers on 127.0.0.1 (a raw asyncio one, aiohttp.web)."""

from __future__ import annotations

import contextlib
import zlib
from pathlib import Path

import pytest
from test_http1 import Conn, raw_server
from test_net_edges import bomb

from engine.core.query import Request
from engine.net.transport import open_transport

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
CLIENTS = ["http1", "session", "http2"]


async def test_inflating_stops_at_the_call_deadline() -> None:
    """A gzip bomb sent whole (2 GiB of zeros in ~2 MB, all in the socket buffers at
    once) under a limit it would take over a second to reach: the call ends as a timeout
    at its deadline. Before, http1's deadline only dropped the connection and the inflate
    loop went on over the buffered bytes to too_large."""
    start, block = bomb(16 + zlib.MAX_WBITS)
    wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n"
    wire += start + block * 2047

    async def handler(conn: Conn) -> None:
        if await conn.read_request() is not None:
            conn.write(wire)
            with contextlib.suppress(ConnectionError):
                await conn.writer.drain()

    async with raw_server(handler) as server:
        for name in CLIENTS:
            async with open_transport(
                concurrency=1, timeout=0.1, client=name, max_response_bytes=1800 * MIB
            ) as transport:
                resp = await transport.send(Request(server.base + "/", {}), None)
            assert (resp.error_kind, resp.status, resp.body) == ("timeout", None, b""), name
            assert resp.error == "no answer within 0.1s", name
