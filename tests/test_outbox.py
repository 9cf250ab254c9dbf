"""engine/net/outbox.py on real sockets: every head put during a turn of the loop goes
out when it ends; a connection closed before that is skipped, not fatal."""

from __future__ import annotations

import asyncio

import pytest

from engine.net.outbox import Outbox


async def _server() -> tuple[asyncio.Server, list[bytes], asyncio.Event]:
    got: list[bytes] = []
    arrived = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        if data:
            got.append(data)
            arrived.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, got, arrived


async def _connect(port: int) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    return transport


@pytest.mark.anyio
async def test_every_head_put_in_a_turn_goes_out() -> None:
    server, got, _ = await _server()
    port = server.sockets[0].getsockname()[1]
    outbox = Outbox(asyncio.get_running_loop())
    transports = [await _connect(port) for _ in range(3)]
    for i, transport in enumerate(transports):
        outbox.put(transport, b"head %d" % i)
    for _ in range(100):
        if len(got) == 3:
            break
        await asyncio.sleep(0.01)
    assert sorted(got) == [b"head 0", b"head 1", b"head 2"]
    for transport in transports:
        transport.close()
    server.close()
    await server.wait_closed()


@pytest.mark.anyio
async def test_a_connection_closed_before_the_flush_is_skipped() -> None:
    server, got, _ = await _server()
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    outbox = Outbox(loop)
    closed, open_ = await _connect(port), await _connect(port)
    outbox.put(closed, b"never")
    outbox.put(open_, b"sent")
    closed.abort()  # its deadline passed, say: the flush must not write to it, nor stop
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [b"sent"]
    open_.close()
    server.close()
    await server.wait_closed()
