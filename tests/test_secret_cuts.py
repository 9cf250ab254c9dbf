"""No prefix of a secret escapes through a message cut short before its redaction.

A hostile server on 127.0.0.1 echoes the bearer token (or the token endpoint the client
secret) where a message quotes only the start of what it got: an unknown
Content-Encoding (engine/net/bodies.py quoted its first 60 characters), the start of a
header line over 8190 bytes (aiohttp's LineTooLong keeps a line's first 100 bytes).
The redactor cannot find a secret cut short, so such text is never quoted cut: the
value is quoted whole or not at all, the library's excerpt not at all. Each test looks
for the secret's first 12 characters (raw and percent-encoded) in every message.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import anyio
import orjson
import pytest

from engine.core.query import Request
from engine.core.tokenwindow import TokenFailure
from engine.net.token_client import TokenClient
from engine.net.transport import open_transport

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "eyJhbGciOiJSUzI1NiJ9." + "SecretTokenBody" * 20  # a long JWT-like token
SECRET = "s3cr3t-" + "VerySecretClientValue" * 5
_HTTP2 = all(importlib.util.find_spec(name) is not None for name in ("httpx", "h2"))
CLIENTS = ["http1", "session", *(["http2"] if _HTTP2 else [])]

Echo = Callable[[bytes, bytes], bytes]  # (request head, request body) -> the answer


def _prefixes(secret: str) -> list[str]:
    return [secret[:12], quote(secret[:12], safe="")]


def _assert_no_prefix(secret: str, **texts: str) -> None:
    for where, text in texts.items():
        for prefix in _prefixes(secret):
            assert prefix not in text, f"{where} holds {prefix!r}: {text[:300]!r}"


def _token_of(head: bytes) -> bytes:
    found = re.search(rb"(?im)^authorization: bearer (.*?)\r$", head)
    return found.group(1) if found is not None else b"none"


def _secret_of(form: bytes) -> bytes:
    found = re.search(rb"client_secret=([^&]*)", form)
    return found.group(1) if found is not None else b"none"


def echo_in_coding(head: bytes, body: bytes) -> bytes:
    """The bearer token (or the form's client secret) as the answer's Content-Encoding."""
    echoed = _token_of(head) if body == b"" else _secret_of(body)
    return b"HTTP/1.1 200 OK\r\nContent-Encoding: " + echoed + b"\r\nContent-Length: 2\r\n\r\n{}"


def echo_at_long_line(head: bytes, body: bytes) -> bytes:
    """The bearer token (or the form body) at the start of a 9000-byte header line."""
    echoed = _token_of(head) if body == b"" else body
    line = b"X-Echo: " + echoed + b"y" * 9000
    return b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 2\r\n\r\n{}"


@asynccontextmanager
async def echoing(echo: Echo) -> AsyncIterator[str]:
    """A raw HTTP/1.1 server answering every request with `echo`; yields its base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                writer.write(echo(head, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("name", CLIENTS)
async def test_an_echoed_content_encoding_is_quoted_whole_or_not_at_all(name: str) -> None:
    async with echoing(echo_in_coding) as base:
        async with open_transport(concurrency=1, timeout=5.0, client=name) as transport:
            echoed = await transport.send(Request(base + "/", {}), f"Bearer {TOKEN}")
            short = await transport.send(Request(base + "/", {}), "Bearer br")
    assert (echoed.status, echoed.error_kind) == (None, "protocol"), echoed.error
    assert echoed.error is not None
    assert f"Content-Encoding of {len(TOKEN)} characters" in echoed.error
    _assert_no_prefix(TOKEN, error=echoed.error)
    # A value short enough is still quoted (whole: the record's redaction can find it).
    assert short.error == "answer in an unsupported Content-Encoding 'br' " + (
        "(adbatch asks for gzip, deflate)"
    )


async def test_the_session_client_does_not_quote_aiohttp_s_excerpt_of_a_long_line() -> None:
    async with echoing(echo_at_long_line) as base:
        async with open_transport(concurrency=1, timeout=5.0, client="session") as transport:
            response = await transport.send(Request(base + "/", {}), f"Bearer {TOKEN}")
    assert response.status is None
    assert response.error == "malformed HTTP response: a header line longer than 8190 bytes"
    _assert_no_prefix(TOKEN, error=response.error)


@pytest.mark.parametrize(
    "echo",
    [pytest.param(echo_in_coding, id="coding"), pytest.param(echo_at_long_line, id="long-line")],
)
async def test_the_token_client_quotes_no_prefix_of_the_client_secret(echo: Echo) -> None:
    async with echoing(echo) as base:
        url = base + "/oauth2/token"
        async with TokenClient(url, client_id="c", client_secret=SECRET, timeout=5.0) as client:
            failure = await client.fetch()
    assert isinstance(failure, TokenFailure)
    assert failure.kind == "unavailable"
    if echo is echo_at_long_line:
        assert "a header line longer than 8190 bytes" in failure.message
    _assert_no_prefix(SECRET, message=failure.message)


# -- the whole CLI: records, --summary and stderr ------------------------------------


async def _adbatch(*args: str, env: dict[str, str]) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ADBATCH_")}
    full.update(env, PYTHONPATH=str(ROOT))
    proc = await anyio.run_process(
        [sys.executable, "-m", "engine", "run", "--no-progress", *args], env=full, check=False
    )
    assert proc.returncode is not None
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def _events(path: Path) -> Path:
    event = {
        "criteo-partner-id": 1,
        "retailer-visitor-id": "v",
        "event-type": "viewHome",
        "page-id": "viewHome_API_desktop",
    }
    path.write_bytes(b"".join(orjson.dumps({**event, "id": f"e{i}"}) + b"\n" for i in range(2)))
    return path


@pytest.mark.slow  # CLI runs in subprocesses: a few seconds in all
@pytest.mark.parametrize(
    ("echo", "args"),
    [
        pytest.param(echo_in_coding, ["--http-client", "http1"], id="coding-http1"),
        pytest.param(echo_in_coding, ["--http-client", "session"], id="coding-session"),
        pytest.param(echo_in_coding, ["--workers", "2"], id="coding-workers"),
        pytest.param(echo_at_long_line, ["--http-client", "session"], id="long-line-session"),
    ],
)
async def test_no_prefix_of_the_token_in_records_summary_or_stderr(
    tmp_path: Path, echo: Echo, args: list[str]
) -> None:
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    async with echoing(echo) as base:
        code, err = await _adbatch(
            *args,
            *("--retries", "0", "--endpoint", base + "/delivery/retailmedia"),
            *("--summary", str(summary), "-o", str(out), str(_events(tmp_path / "in.jsonl"))),
            env={"ADBATCH_TOKEN": TOKEN},
        )
    assert code == 1, err
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(records) == 2
    assert all(r["attempts"] == 1 and r["error_kind"] in ("protocol", "network") for r in records)
    _assert_no_prefix(TOKEN, output=out.read_text(), summary=summary.read_text(), stderr=err)


@pytest.mark.slow
@pytest.mark.parametrize(
    "echo",
    [pytest.param(echo_in_coding, id="coding"), pytest.param(echo_at_long_line, id="long-line")],
)
async def test_no_prefix_of_the_client_secret_in_the_exit_3_message(
    tmp_path: Path, echo: Echo
) -> None:
    async with echoing(echo) as base:
        code, err = await _adbatch(
            *("--token-wait", "1", "--endpoint", base + "/delivery/retailmedia"),
            *("--token-url", base + "/oauth2/token"),
            *("-o", str(tmp_path / "out.jsonl"), str(_events(tmp_path / "in.jsonl"))),
            env={"ADBATCH_CLIENT_ID": "c", "ADBATCH_CLIENT_SECRET": SECRET},
        )
    assert code == 3, err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    _assert_no_prefix(SECRET, stderr=err)


# -- quoted as it came: no spelling the redactor does not know ------------------------

#: A token and a client secret holding both quotes: repr() wrote `'` as `\'`, a spelling
#: the redactor does not know, and `ghijklmn` reached the records, --summary and stderr.
QUOTED_TOKEN = "abc'def\"ghijklmnXYZ9"
QUOTED_SECRET = "sec'ret\"VALUE123"


def echo_decoded_in_coding(head: bytes, body: bytes) -> bytes:
    """As echo_in_coding, the client secret decoded from its form first (raw bytes)."""
    echoed = _token_of(head) if body == b"" else unquote_to_bytes(_secret_of(body))
    return b"HTTP/1.1 200 OK\r\nContent-Encoding: " + echoed + b"\r\nContent-Length: 2\r\n\r\n{}"


def _assert_no_piece(secret: str, **texts: str) -> None:
    """No run of 4 letters or digits of `secret` in any text (whatever spells the rest)."""
    for where, text in texts.items():
        for piece in re.findall(r"[A-Za-z0-9]{4,}", secret):
            assert piece not in text, f"{where} holds {piece!r}: {text[:300]!r}"


@pytest.mark.parametrize("name", CLIENTS)
async def test_an_echoed_content_encoding_is_quoted_as_it_came(name: str) -> None:
    async with echoing(echo_in_coding) as base:
        async with open_transport(concurrency=1, timeout=5.0, client=name) as transport:
            echoed = await transport.send(Request(base + "/", {}), f"Bearer {QUOTED_TOKEN}")
    # Raw, as the redaction of the record and the messages will find it.
    assert echoed.error == f"answer in an unsupported Content-Encoding '{QUOTED_TOKEN}' " + (
        "(adbatch asks for gzip, deflate)"
    )


async def test_the_token_client_redacts_a_client_secret_holding_quotes() -> None:
    async with echoing(echo_decoded_in_coding) as base:
        url = base + "/oauth2/token"
        async with TokenClient(
            url, client_id="c", client_secret=QUOTED_SECRET, timeout=5.0
        ) as client:
            failure = await client.fetch()
    assert isinstance(failure, TokenFailure)
    assert "Content-Encoding '[redacted]'" in failure.message, failure.message
    _assert_no_piece(QUOTED_SECRET, message=failure.message)


@pytest.mark.slow  # CLI runs in subprocesses
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--http-client", "http1"], id="http1"),
        pytest.param(["--http-client", "session"], id="session"),
        pytest.param(["--workers", "2"], id="workers"),
    ],
)
async def test_a_token_holding_quotes_is_in_no_record_summary_or_stderr(
    tmp_path: Path, args: list[str]
) -> None:
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    async with echoing(echo_in_coding) as base:
        code, err = await _adbatch(
            *args,
            *("--retries", "0", "--endpoint", base + "/delivery/retailmedia"),
            *("--summary", str(summary), "-o", str(out), str(_events(tmp_path / "in.jsonl"))),
            env={"ADBATCH_TOKEN": QUOTED_TOKEN},
        )
    assert code == 1, err
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["error_kind"] for r in records] == ["protocol", "protocol"]
    assert "Content-Encoding '[redacted]'" in records[0]["error"]
    _assert_no_piece(QUOTED_TOKEN, output=out.read_text(), summary=summary.read_text(), stderr=err)


@pytest.mark.slow
async def test_a_client_secret_holding_quotes_is_not_in_the_exit_3_message(tmp_path: Path) -> None:
    async with echoing(echo_decoded_in_coding) as base:
        code, err = await _adbatch(
            *("--token-wait", "1", "--endpoint", base + "/delivery/retailmedia"),
            *("--token-url", base + "/oauth2/token"),
            *("-o", str(tmp_path / "out.jsonl"), str(_events(tmp_path / "in.jsonl"))),
            env={"ADBATCH_CLIENT_ID": "c", "ADBATCH_CLIENT_SECRET": QUOTED_SECRET},
        )
    assert code == 3, err
    assert err.count("\n") == 1, err
    assert "Content-Encoding '[redacted]'" in err, err
    _assert_no_piece(QUOTED_SECRET, stderr=err)
