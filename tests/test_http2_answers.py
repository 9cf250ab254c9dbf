"""`--http2` and the answers a server should not give: a `:status` that is not a status
code, the server's bytes in an error (the token echoed where a library quotes it), and a
stray answer after the one asked for on an HTTP/1.1 connection.

- A raw HTTP/2 server (the h2 library, its header checks off) sends `:status` `tok`, the
  token, none, two, 2000 or 99: each a `protocol` record in the http1 client's words,
  never an exception (it was a ValueError, an `internal` record and exit 70), never a
  200 (httpcore took a missing `:status` as 200); the connection goes on.
- The token (with a `\\` and a `'`, which a repr() escapes and the redaction then misses)
  echoed in an HTTP/2 content-length, and, where ALPN picks http/1.1, in the status line
  or as a header name: the record says what was wrong in our words, never the bytes.
- A plain http:// endpoint answering a 503 and, in the same write, a stray `200 {}`: the
  next call gets its own answer, not the stray (20 of 40 records were shifted by one).

Real servers on 127.0.0.1 started by the test; certificates from tests/tls_pki.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

pytest.importorskip("httpx", reason="httpx not installed: pip install 'adbatch[http2]'")
pytest.importorskip("h2", reason="h2 not installed: pip install 'adbatch[http2]'")

import h2.config
import h2.connection
import h2.events
from tls_pki import Pki, make_pki, openssl

from engine.core.query import Request
from engine.core.records import Response
from engine.net.tls import client_context
from engine.net.transport import open_transport

pytestmark = pytest.mark.skipif(openssl() is None, reason="openssl is not installed")

#: A token the README allows, with the characters repr() escapes.
TOKEN = "abc\\def\"ghi'jkl-0123456789"
BODY = b'{"status":"OK"}'
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _head(path: bytes) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 answer's head for `path`."""
    statuses = {
        b"/tok": [(b":status", b"tok")],
        b"/token": [(b":status", TOKEN.encode())],
        b"/none": [],
        b"/two": [(b":status", b"200"), (b":status", b"200")],
        b"/2000": [(b":status", b"2000")],
        b"/99": [(b":status", b"99")],
        b"/length": [(b":status", b"200"), (b"content-length", TOKEN.encode())],
    }
    return [*statuses.get(path, [(b":status", b"200")]), (b"x-a", b"b")]


async def _h2_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    config = h2.config.H2Configuration(
        client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    try:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    path = dict(event.headers or [])[b":path"].split(b"?")[0]
                    conn.send_headers(event.stream_id, _head(path))
                    conn.send_data(event.stream_id, BODY, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _h1_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 by path: /status (the token as status), /header (as a header name),
    /stray (a 503, and a stray 200 in the same write), anything else a 503."""
    length = b"Content-Length: %d\r\n\r\n" % len(BODY)
    answers = {
        b"/status": b"HTTP/1.1 " + TOKEN.encode() + b" OK\r\n" + length + BODY,
        b"/header": b"HTTP/1.1 200 OK\r\n" + TOKEN.encode() + b": x\r\n" + length + BODY,
        b"/stray": b"HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    }
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            path = head.split(b" ")[1].split(b"?")[0]
            writer.write(answers.get(path, b"HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@asynccontextmanager
async def serving(handler: Handler, pki: Pki | None, alpn: str) -> AsyncIterator[str]:
    """`handler` on a free port (over TLS offering only `alpn` when `pki`): its base URL."""
    context = None
    if pki is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.good, pki.server_key)
        context.set_alpn_protocols([alpn])
    served = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    port = served.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if pki else 'http'}://127.0.0.1:{port}"
    finally:
        served.close()
        await served.wait_closed()


async def _calls(base: str, pki: Pki | None, paths: list[str]) -> list[Response]:
    """The answers to `paths`, one after another on one --http2 transport (`-c 1`)."""
    tls = client_context.__wrapped__(cacert=str(pki.ca)) if pki is not None else None
    async with open_transport(concurrency=1, timeout=5.0, client="http2", tls=tls) as t:
        return [await t.send(Request(base + path, {}), f"Bearer {TOKEN}") for path in paths]


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/tok", "/token", "/none", "/two", "/2000", "/99"])
async def test_a_status_that_is_not_one_is_a_protocol_record(pki: Pki, path: str) -> None:
    async with serving(_h2_answers, pki, "h2") as base:
        bad, after = await _calls(base, pki, [path, "/ok"])
    assert (bad.status, bad.error_kind, bad.error, bad.body) == (
        None, "protocol", "malformed HTTP response: Invalid status code", b""
    )  # fmt: skip
    assert (after.status, after.error_kind, after.body) == (200, None, BODY)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "alpn", "error"),
    [
        pytest.param(
            "/length", "h2", "HTTP/2 protocol error: Invalid content-length header",
            id="h2-content-length",
        ),
        pytest.param(
            "/status", "http/1.1", "malformed HTTP response: Invalid status code",
            id="h1-status-line",
        ),
        pytest.param(
            "/header", "http/1.1", "malformed HTTP response: Invalid header token",
            id="h1-header-name",
        ),
    ],
)  # fmt: skip
async def test_the_servers_bytes_are_never_quoted(
    pki: Pki, path: str, alpn: str, error: str
) -> None:
    """h11 and h2 quote them with repr(): the token came back escaped (`abc\\\\def`), and
    the redaction, which looks for the token as it is, missed it."""
    handler = _h2_answers if alpn == "h2" else _h1_answers
    async with serving(handler, pki, alpn) as base:
        (bad,) = await _calls(base, pki, [path])
    assert (bad.status, bad.error_kind, bad.error) == (None, "protocol", error)
    assert "abc" not in (bad.error or "")


@pytest.mark.anyio
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https-without-h2"])
async def test_a_stray_answer_is_not_given_to_the_next_call(pki: Pki, tls: bool) -> None:
    """HTTP/1.1 from --http2 (plain http://, or ALPN without h2): the connection that
    held bytes past its answer is dropped, as the http1 client drops it."""
    async with serving(_h1_answers, pki if tls else None, "http/1.1") as base:
        answers = await _calls(base, pki if tls else None, ["/stray", "/503", "/stray", "/503"])
    assert [(a.status, a.body) for a in answers] == [(503, b"")] * 4
