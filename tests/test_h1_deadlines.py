"""The http1 client's deadlines (engine/net/h1pool.py `watch`): one timer per pool,
armed at the soonest deadline in flight, expires each call at its own deadline, and a
call answered in time is never failed by another's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
from test_http1 import Conn, Handler, client, http_answer, raw_server

from engine.net.h1conn import HttpError


def _slow_or_fast(answer: bytes) -> Handler:
    async def handler(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            if b"/slow" in request:
                await conn.wait_eof()  # never answers
                return
            conn.write(answer)
            await conn.writer.drain()

    return handler


async def _timed(coro: Awaitable[object]) -> tuple[object, float]:
    start = time.monotonic()
    try:
        result: object = await asyncio.wait_for(coro, 10)
    except HttpError as exc:
        result = exc
    return result, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.anyio
async def test_each_call_times_out_at_its_own_deadline() -> None:
    handler = _slow_or_fast(http_answer(b"fast"))
    async with raw_server(handler) as server, client(limit=8, seconds=0.3) as c:
        url = server.base
        first = asyncio.ensure_future(_timed(c.get(url + "/slow", {})))
        await asyncio.sleep(0.15)  # a second stalled call, armed after the first
        second = asyncio.ensure_future(_timed(c.get(url + "/slow", {})))
        fast = [await c.get(url + "/fast", {}) for _ in range(5)]
        (error1, took1), (error2, took2) = await first, await second
        assert [answer.body for answer in fast] == [b"fast"] * 5
        for error, took in ((error1, took1), (error2, took2)):
            assert isinstance(error, HttpError), error
            assert error.kind == "timeout"
            assert 0.25 <= took < 2.0, took  # its own deadline, not the other's
        # The pool's timer is armed anew for later calls.
        error3, _ = await _timed(c.get(url + "/slow", {}))
        assert isinstance(error3, HttpError)
        assert error3.kind == "timeout"
        assert (await c.get(url + "/fast", {})).body == b"fast"


@pytest.mark.anyio
async def test_a_call_answered_in_time_is_not_expired_later() -> None:
    handler = _slow_or_fast(http_answer(b"fast"))
    async with raw_server(handler) as server, client(limit=2, seconds=0.2) as c:
        answer = await c.get(server.base + "/fast", {})
        await asyncio.sleep(0.4)  # past that call's deadline, on the same connection
        again = await c.get(server.base + "/fast", {})
        assert (answer.body, again.body) == (b"fast", b"fast")
        assert server.accepted == 1  # the kept-alive connection was not dropped
