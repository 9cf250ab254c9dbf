"""The network edges of issue 12, for both clients against real servers on 127.0.0.1:
answers that arrive unasked on an idle keep-alive connection, any Content-Length and
Content-Encoding, Retry-After of any form on the wire, and answer size limits (gzip
bombs, plain bodies over the limit) through the transports, the token client and the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import orjson
import pytest
from aiohttp import web
from conftest import MOCK_TOKEN, read_records
from test_http1 import CLIENTS, Conn, Handler, http_answer, raw_server
from web_app import serving

import engine
from engine.core.query import Request
from engine.core.tokenwindow import TokenFailure
from engine.net.token_client import TokenClient
from engine.net.transport import Response, open_transport

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,  # end to end: real servers and CLI runs, seconds in all (CI runs -m slow)
]

ROOT = Path(__file__).resolve().parent.parent
EVENT = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "rv-1",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}
LIMIT = 256 * 1024  # the transports' limit in the tests below (quick to pass)


async def send(
    name: str, url: str, *, limit: int = LIMIT, calls: int = 1, seconds: float = 5.0
) -> list[Response]:
    """`calls` calls one after another through one transport `name`."""
    async with open_transport(
        concurrency=2, timeout=seconds, client=name, max_response_bytes=limit
    ) as transport:
        return [await transport.send(Request(url, {}), None) for _ in range(calls)]


def one_line_error(resp: Response) -> str:
    assert resp.error is not None
    assert "\n" not in resp.error
    assert "\r" not in resp.error
    assert "Traceback" not in resp.error
    return resp.error


# --- item 10: no answer goes to the wrong event ---


def _tag_of(head: bytes) -> str:
    target = head.split(b" ", 2)[1].decode()
    return target.partition("tag=")[2]


def _tagged(tag: str) -> bytes:
    return http_answer(orjson.dumps({"tag": tag}), headers=("Content-Type: application/json",))


_STRAYS = {
    "whole": _tagged("unsolicited"),
    "partial-head": b"HTTP/1.1 200 OK\r\nContent-Le",
    "head-only": b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n",
    "garbage": b"\x00\x01garbage",
}


@pytest.mark.parametrize("stray", list(_STRAYS))
@pytest.mark.parametrize("name", CLIENTS)
async def test_unsolicited_bytes_on_an_idle_connection_never_answer_the_next_call(
    name: str, stray: str
) -> None:
    """After answering, the server sends something nobody asked for on the idle
    connection; every call must still get the answer to its own request."""
    sent = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while (head := await conn.read_request()) is not None:
            conn.write(_tagged(_tag_of(head)))
            await conn.writer.drain()
            await asyncio.sleep(0.02)
            conn.write(_STRAYS[stray])
            await conn.writer.drain()
            sent.set()

    async with raw_server(handler) as server:
        async with open_transport(concurrency=1, timeout=5.0, client=name) as transport:
            got: list[Response] = []
            for i in range(3):
                sent.clear()
                got.append(await transport.send(Request(f"{server.base}/?tag={i}", {}), None))
                # (A client that took the stray as an answer may leave the server
                # waiting: the records below then tell.)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        await sent.wait()
                await asyncio.sleep(0.05)  # the stray reaches the idle connection
    for i, resp in enumerate(got):
        assert resp.error is None, resp.error
        assert resp.status == 200
        assert orjson.loads(resp.body) == {"tag": str(i)}
    if (name, stray) != ("session", "partial-head"):
        assert server.accepted == 3  # each spoiled connection was dropped, never reused
    # else: aiohttp's session gives each request a new parser, which drops the stray
    # bytes of the old one: the connection stays, every answer is still its own.


# --- item 1: answers have a size ---

_ZEROS = bytes(1 << 20)


def bomb(wbits: int) -> tuple[bytes, bytes]:
    """A compressed stream of zeros as (start, block): start + block * n inflates to
    (n + 1) MiB from about 1 KB a MiB (each block ends in a full flush, so the same
    bytes continue the stream however often they are sent)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    start = compressor.compress(_ZEROS) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(_ZEROS) + compressor.flush(zlib.Z_FULL_FLUSH)
    return start, block


_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "raw-deflate": -zlib.MAX_WBITS}


def streaming(head: bytes, start: bytes, block: bytes, count: int) -> Handler:
    """Answer each request with `head`, `start`, then `block` `count` times, for as long
    as the client reads (a bomb, or a plain body of any size, never built whole)."""

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            conn.write(head + start)
            for _ in range(count):
                conn.write(block)
                await conn.writer.drain()
        # (A client that drops the connection ends this with a ConnectionError.)

    return handler


@pytest.mark.parametrize("coding", list(_CODINGS))
@pytest.mark.parametrize("name", CLIENTS)
async def test_compression_bomb_is_too_large_and_its_connection_dropped(
    name: str, coding: str
) -> None:
    """2 GiB of zeros in about 2 MB: the answer stops at the limit, keeps its status,
    not its body, is final, and the next call gets a new connection."""
    start, block = bomb(_CODINGS[coding])
    wire_coding = "deflate" if coding == "raw-deflate" else coding
    head = (
        f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: {wire_coding}\r\n\r\n"
    ).encode()

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    async with raw_server(streaming(head, chunk(start), chunk(block), 2047)) as server:
        began = time.monotonic()
        first, second = await send(name, server.base + "/", calls=2)
        took = time.monotonic() - began
        assert server.accepted == 2
    for resp in (first, second):
        assert resp.error_kind == "too_large"
        assert resp.status == 200
        assert resp.body == b""
        error = one_line_error(resp)
        assert f"{LIMIT} bytes" in error
        assert "--max-response-bytes" in error
    assert took < 30  # not a behaviour bound: a hung loop shows here, not in a timeout


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: 1073741824\r\n", id="content-length-1g"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", id="chunked"),
        pytest.param(b"Connection: close\r\n", id="until-eof"),
    ],
)
@pytest.mark.parametrize("name", CLIENTS)
async def test_plain_body_over_the_limit_is_too_large(name: str, framing: bytes) -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\n" + framing + b"\r\n"
    block = b"x" * 65536
    if b"chunked" in framing:
        block = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    async with raw_server(streaming(head, b"", block, 16384)) as server:
        (resp,) = await send(name, server.base + "/")
    assert (resp.status, resp.error_kind, resp.body) == (503, "too_large", b"")
    assert "--max-response-bytes" in one_line_error(resp)


def _encoded(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    return data


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT], ids=["just-under", "exactly"])
@pytest.mark.parametrize("coding", ["identity", "gzip", "deflate"])
@pytest.mark.parametrize("name", CLIENTS)
async def test_body_up_to_the_limit_is_kept(name: str, coding: str, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    wire = http_answer(_encoded(coding, body), headers=(f"Content-Encoding: {coding}",))
    async with raw_server(streaming(b"", wire, b"", 0)) as server:
        (resp,) = await send(name, server.base + "/")
    assert resp.error is None, resp.error
    assert (resp.status, len(resp.body)) == (200, size)
    assert resp.body == body


@pytest.mark.parametrize("coding", ["identity", "gzip"])
@pytest.mark.parametrize("name", CLIENTS)
async def test_one_byte_over_the_limit_is_too_large(name: str, coding: str) -> None:
    body = b"y" * (LIMIT + 1)
    wire = http_answer(_encoded(coding, body), headers=(f"Content-Encoding: {coding}",))
    async with raw_server(streaming(b"", wire, b"", 0)) as server:
        (resp,) = await send(name, server.base + "/")
    assert (resp.status, resp.error_kind) == (200, "too_large")


async def test_token_answer_over_the_cap_is_a_failed_token_request() -> None:
    """A token endpoint answering a gzip bomb, or a huge plain body: a TokenFailure."""
    start, block = bomb(16 + zlib.MAX_WBITS)
    bomb_head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n"
    plain_head = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n"
    for head, first, rest in ((bomb_head, start, block), (plain_head, b"{", b" " * 65536)):
        async with raw_server(streaming(head, first, rest, 2047)) as server:
            client = TokenClient(server.base + "/oauth2/token", client_id="c", client_secret="s3")
            async with client:
                failure = await client.fetch()
        assert isinstance(failure, TokenFailure)
        assert failure.kind == "unavailable"
        assert "larger than 65536 bytes" in failure.message
        assert "s3" not in failure.message


def _cli(args: list[str], cwd: Path) -> tuple[int, str, int]:
    """Run the CLI in a child process: exit code, stderr, the process tree's peak RSS in
    MiB (the sum of each process's own high-water mark: --workers included).

    The peaks are read from /proc (VmHWM) while the tree runs, not from wait4's
    ru_maxrss: a child spawned from pytest starts on pytest's memory map, and exec
    carries that map's high-water mark into ru_maxrss, so it measured pytest's size
    (220 MiB in a full run) rather than adbatch's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ADBATCH_TOKEN": MOCK_TOKEN}
    with (cwd / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", "--no-progress", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=cwd,
        )
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        _tree_peaks(proc.pid, peaks)
        time.sleep(0.005)
    return proc.returncode, (cwd / "stderr.txt").read_text(), sum(peaks.values()) // 1024


def _tree_peaks(pid: int, peaks: dict[int, int]) -> None:
    """Record the VmHWM (KiB) of `pid` and its descendants into `peaks`."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return  # gone meanwhile
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))
    for child in children:
        _tree_peaks(int(child), peaks)


@contextlib.asynccontextmanager
async def bomb_server() -> AsyncIterator[str]:
    """An aiohttp.web server answering every GET with a 2 GiB gzip bomb (~2 MB sent)."""
    start, block = bomb(16 + zlib.MAX_WBITS)

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Encoding": "gzip"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            await resp.write(start)
            for _ in range(2047):
                await resp.write(block)
            await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serving(app) as base:
        yield f"{base}/delivery"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--http-client", "http1"], id="http1"),
        pytest.param(["--http-client", "session"], id="session"),
        pytest.param(["--workers", "2"], id="workers-2"),
    ],
)
async def test_gzip_bomb_through_the_cli_keeps_memory_small(
    tmp_path: Path, options: list[str]
) -> None:
    """Before: a 2 MB gzip answer inflating to 2 GB took the process past 6 GB of RSS and
    crashed it. Now each event's record is too_large and the run stays small."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps({**EVENT, "id": f"e{i}"}) + b"\n" for i in range(6)))
    async with bomb_server() as endpoint:
        args = ["--endpoint", endpoint, "-c", "3", "-o", "out.jsonl", "events.jsonl", *options]
        rc, stderr, peak_mb = await anyio.to_thread.run_sync(_cli, args, tmp_path)
    assert rc == 1, stderr
    assert "Traceback" not in stderr
    records = read_records(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in records) == [f"e{i}" for i in range(6)]
    for record in records:
        assert (record["status"], record["ok"], record["error_kind"]) == (200, False, "too_large")
        assert record["response"] is None
        assert record["attempts"] == 1  # final, not retried
        assert "--max-response-bytes" in record["error"]
    assert "too_large" in stderr or "failed" in stderr
    assert peak_mb < 500, f"peak RSS {peak_mb} MiB"


# --- item 3: any server header is data ---


def first_then_sane(wire: bytes) -> Handler:
    """The first connection gets `wire` and is closed; later ones a sane keep-alive 200."""

    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            if await conn.read_request() is not None:
                conn.write(wire)
                await conn.writer.drain()
            return
        while await conn.read_request() is not None:
            conn.write(http_answer(b"sane"))

    return handler


_OK, _FAILED = "ok", "failed"


@pytest.mark.parametrize(
    ("fields", "body", "outcome"),
    [
        pytest.param(b"Content-Length: " + b"9" * 40, b"ok", _FAILED, id="huge"),
        pytest.param(b"Content-Length: 18446744073709551616", b"ok", _FAILED, id="2**64"),
        pytest.param(b"Content-Length: -1", b"ok", _FAILED, id="negative"),
        pytest.param(b"Content-Length: abc", b"ok", _FAILED, id="garbage"),
        pytest.param(b"Content-Length: +2", b"ok", _FAILED, id="plus-sign"),
        pytest.param(b"Content-Length: 0x2", b"ok", _FAILED, id="hex"),
        pytest.param(b"Content-Length: 2, 2", b"ok", _FAILED, id="list"),
        pytest.param(b"Content-Length: 2\r\nContent-Length: 2", b"ok", _FAILED, id="duplicate"),
        pytest.param(b"Content-Length: 2\r\nContent-Length: 3", b"ok", _FAILED, id="conflicting"),
        pytest.param(b"Content-Length: 100", b"ok", _FAILED, id="longer-than-body"),
        pytest.param(b"Content-Length:   2  ", b"ok", _OK, id="spaces"),
        pytest.param(b"Content-Length: 2\r\nTransfer-Encoding: chunked", b"ok", _FAILED, id="both"),
    ],
)
@pytest.mark.parametrize("name", CLIENTS)
async def test_content_length_of_any_form_is_a_record(
    name: str, fields: bytes, body: bytes, outcome: str
) -> None:
    """Never raised out of the call: an answer, or a record of a failed one (llhttp
    refuses what RFC 9110 does); then the next call goes on a fresh connection."""
    wire = b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n\r\n" + body
    async with raw_server(first_then_sane(wire)) as server:
        first, second = await send(name, server.base + "/", calls=2)
    if outcome == _OK:
        assert first.error is None, first.error
        assert (first.status, first.body) == (200, b"ok")
    else:
        assert first.error_kind in {"protocol", "payload", "network", "disconnected"}
        assert first.status is None
        one_line_error(first)
    assert (second.status, second.body) == (200, b"sane")


_TEXT = b'{"placements":[' + b'{"id":"p","n":1},' * 100 + b'{"id":"end"}]}'


@pytest.mark.parametrize(
    ("coding", "body", "expected"),
    [
        pytest.param("GZIP", gzip.compress(_TEXT), _TEXT, id="upper-case"),
        pytest.param(" gzip ", gzip.compress(_TEXT), _TEXT, id="spaces"),
        pytest.param("x-gzip", gzip.compress(_TEXT), _TEXT, id="x-gzip"),
        pytest.param("identity", _TEXT, _TEXT, id="identity"),
        pytest.param("gzip, identity", gzip.compress(_TEXT), _TEXT, id="gzip-identity"),
        pytest.param("", _TEXT, _TEXT, id="empty"),
        pytest.param(
            "gzip", gzip.compress(_TEXT) + gzip.compress(b"+"), _TEXT + b"+", id="members"
        ),
        pytest.param("gzip", b"", b"", id="gzip-empty-body"),
        pytest.param("br", b"\x1b\x00\x00", "protocol", id="br-without-brotli"),
        pytest.param("zstd", b"(\xb5/\xfd", "protocol", id="zstd"),
        pytest.param("compress", b"\x1f\x9d", "protocol", id="compress"),
        pytest.param("gzip, gzip", gzip.compress(gzip.compress(_TEXT)), "protocol", id="twice"),
        pytest.param("x" * 4000, _TEXT, "protocol", id="long-unknown"),
        pytest.param("gzip", _TEXT, "payload", id="gzip-not-gzip"),
        pytest.param("gzip", gzip.compress(_TEXT)[:-20], "payload", id="gzip-truncated"),
        pytest.param("deflate", b"\x78\x9c garbage", "payload", id="deflate-garbage"),
    ],
)
@pytest.mark.parametrize("name", CLIENTS)
async def test_content_encoding_of_any_value_is_a_record(
    name: str, coding: str, body: bytes, expected: bytes | str
) -> None:
    """Decoded when it is what we ask for; any other coding is a (final) protocol record,
    a corrupt body a payload one; then the next call goes on a fresh connection."""
    wire = http_answer(body, headers=(f"Content-Encoding: {coding}",))
    async with raw_server(first_then_sane(wire)) as server:
        first, second = await send(name, server.base + "/", calls=2)
    if isinstance(expected, bytes):
        assert first.error is None, first.error
        assert (first.status, first.body) == (200, expected)
    else:
        assert (first.status, first.error_kind) == (None, expected), first.error
        assert len(one_line_error(first)) < 200
    assert (second.status, second.body) == (200, b"sane")


_FINAL, _RETRIED = "final", "retried"


@pytest.mark.parametrize(
    ("retry_after", "outcome"),
    [
        pytest.param("9" * 400, _FINAL, id="hundreds-of-digits"),
        pytest.param("9" * 4000, _FINAL, id="thousands-of-digits"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", _FINAL, id="date-far-future"),
        pytest.param("Mon, 01 Jan 0001 00:00:00 GMT", _RETRIED, id="date-far-past"),
        pytest.param("Mon, 01 Jan 2024 00:00:" + "9" * 30 + " GMT", _RETRIED, id="date-overflow"),
        pytest.param("-" + "9" * 400, _RETRIED, id="huge-negative"),
        pytest.param("1e400", _RETRIED, id="float-overflow"),
        pytest.param("0.01", _RETRIED, id="float"),
        pytest.param("soon, please", _RETRIED, id="garbage"),
        pytest.param("\u00e9t\u00e9", _RETRIED, id="latin-1"),
    ],
)
@pytest.mark.parametrize("name", CLIENTS)
async def test_retry_after_of_any_form_on_the_wire(
    name: str, retry_after: str, outcome: str
) -> None:
    """A 503 with the header, then 200s: the call is retried with the usual backoff, or
    final when the server asks for more than --retry-after-cap; the run goes on."""

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            if len(conn.server.requests) == 1:
                conn.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: "
                    + retry_after.encode("latin-1")
                    + b"\r\n\r\nbusy"
                )
            else:
                conn.write(http_answer(b'{"status":"OK"}'))

    async with raw_server(handler) as server:
        config = engine.Config(
            endpoint=server.base + "/delivery",
            token=MOCK_TOKEN,
            http_client=name,
            concurrency=1,
            retries=2,
            backoff_base=0.001,
            backoff_cap=0.001,
        )
        results = [r async for r in engine.deliver([{**EVENT, "id": "a"}], config)]
    (result,) = results
    if outcome == _RETRIED:
        assert (result.ok, result.status, result.attempts) == (True, 200, 2), result.error
        assert result.retries == ("http_503",)
    else:
        assert (result.ok, result.status, result.attempts) == (False, 503, 1)
        assert result.error is not None
        assert "--retry-after-cap" in result.error
