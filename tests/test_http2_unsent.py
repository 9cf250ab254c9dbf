"""`--http2` (engine/net/http2.py) and the calls a closed connection never sent.

- A server that sends a PUSH_PROMISE (push is off: a connection error) on the first
  stream of each connection, and answers every other stream: the calls queued on that
  connection met h2's closed state machine ("Invalid input SEND_HEADERS in state
  CLOSED") and became final `protocol` records, never sent. Each is now sent again on a
  new connection: every record that is not a 200 is of a call the server saw.
- A server that answers its first stream only after the client's first call on the
  connection was cancelled while httpcore set up the stream limit: the limit took too
  many permits, and the server's SETTINGS then raised "semaphore released too many
  times" (`internal` records). The calls after it are answered.

Real servers on 127.0.0.1 started by the test (test_http2_answers' `serving`, TLS with h2).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter

import pytest

pytest.importorskip("httpx", reason="httpx not installed: pip install 'adbatch[http2]'")
pytest.importorskip("h2", reason="h2 not installed: pip install 'adbatch[http2]'")

import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
from test_http2_answers import pki, serving  # noqa: F401 (fixture)
from tls_pki import Pki, openssl

from engine.core.query import Request
from engine.net.tls import client_context
from engine.net.transport import open_transport

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(openssl() is None, reason="openssl is not installed"),
]

BODY = b'{"status":"OK"}'
PUSH = [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"https"), (b":authority", b"h")]


def _pushing(seen: list[str]):  # type: ignore[no-untyped-def]
    """A server that pushes on each connection's first stream (a connection error for
    the client) and answers the others; `seen` gets each request's path."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        first = True
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if not isinstance(event, h2.events.RequestReceived):
                        continue
                    seen.append(dict(event.headers or [])[b":path"].decode())
                    if first:  # forged: h2 will not push to a client that disabled it
                        first = False
                        frame = hyperframe.frame.PushPromiseFrame(event.stream_id)
                        frame.promised_stream_id = 2
                        frame.data = conn.encoder.encode(PUSH)
                        frame.flags.add("END_HEADERS")
                        writer.write(conn.data_to_send() + frame.serialize())
                    conn.send_headers(event.stream_id, [(b":status", b"200")])
                    conn.send_data(event.stream_id, BODY, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    return handle


async def test_a_call_a_closed_connection_never_sent_is_sent_again(pki: Pki) -> None:  # noqa: F811
    """No call gets a final record without reaching the server (before: ~half of 40
    were `protocol` records, "SEND_HEADERS in state CLOSED", unseen by the server)."""
    seen: list[str] = []
    tls = client_context.__wrapped__(cacert=str(pki.ca))
    async with (
        serving(_pushing(seen), pki, "h2") as base,
        open_transport(concurrency=40, timeout=5.0, client="http2", tls=tls) as transport,
    ):
        answers = await asyncio.gather(
            *(transport.send(Request(f"{base}/c{i}", {}), "Bearer t") for i in range(40))
        )
    unseen = [
        (i, a.error) for i, a in enumerate(answers) if a.status != 200 and f"/c{i}" not in seen
    ]
    assert unseen == []
    assert not any("SEND_HEADERS" in (a.error or "") for a in answers)
    assert Counter(a.status for a in answers)[200] >= 20  # most calls are answered


async def test_the_stream_limit_is_set_up_whole_whatever_the_deadline() -> None:
    """httpcore takes 99 of a new connection's 100 stream permits in its first call; a
    deadline landing among them (one await each) left the limit too loose, and the
    server's SETTINGS then released past it: "semaphore released too many times", an
    `internal` record (repro: a GOAWAY at each connection's 7th stream, -c 150). With
    the transport open, a free permit is taken without an await: the 99 are whole."""
    from httpcore._async import http2 as httpcore_http2

    async with open_transport(concurrency=1, timeout=1.0, client="http2"):
        limit = httpcore_http2.AsyncSemaphore(100)  # as AsyncHTTP2Connection makes it

    async def setup() -> None:
        for _ in range(99):
            await limit.acquire()

    task = asyncio.ensure_future(setup())
    await asyncio.sleep(0)  # one step of the task: a deadline could land only after it
    assert task.done()  # before: one await per permit, a cancel could cut the 99 short
    assert limit._anyio_semaphore.value == 1  # type: ignore[attr-defined]


def _refusing(seen: list[float]):  # type: ignore[no-untyped-def]
    """A server shedding load: every stream reset with REFUSED_STREAM; `seen` gets the
    time of each request."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        seen.append(asyncio.get_running_loop().time())
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    return handle


async def test_a_refused_stream_is_sent_again_after_a_pause(pki: Pki) -> None:  # noqa: F811
    """REFUSED_STREAM: the server sheds load. The call is sent again (free) after a
    pause of 50 ms doubling, three times at most (at -c 64 it went again at once, up to
    65 times: 132 tries for 2 calls), then it is `disconnected`, for the engine's own
    counted and spaced retries: never a `timeout` that hides the refusal."""
    seen: list[float] = []
    tls = client_context.__wrapped__(cacert=str(pki.ca))
    async with (
        serving(_refusing(seen), pki, "h2") as base,
        open_transport(concurrency=64, timeout=2.0, client="http2", tls=tls) as transport,
    ):
        answers = await asyncio.gather(
            *(transport.send(Request(f"{base}/c{i}", {}), "Bearer t") for i in range(2))
        )
    assert [(a.status, a.error_kind) for a in answers] == [(None, "disconnected")] * 2
    assert len(seen) == 2 * 4, len(seen)  # the first try and three resends each
