"""A raw HTTP/1.1 server on 127.0.0.1 that answers from a script, byte for byte.

No aiohttp on the server side: an answer is the bytes the script says, so it can be
anything a broken or hostile server sends (any status line, any header, a lying
Content-Length, a bad chunked or compressed body, a connection closed midway).

Rules:
- Every request, whatever its path, takes the next answer of the script (round-robin
  over all connections); `play(script)` sets the script and restarts the count.
- An answer's body and header values may hold echo marks, `{{auth:SPELLING}}` (the
  request's Authorization header) or `{{token:SPELLING}}` (the same without "Bearer "),
  replaced at send time by that text in one of `SPELLINGS` (raw, JSON-escaped,
  percent-encoded, base64): what a server that echoes the caller's credentials sends.
- The body is encoded (`coding`) after the echo marks are filled, then framed
  (`framing`). A framing that leaves the client waiting for bytes that never come
  (a Content-Length longer than the body, no length at all, a cut chunked body) always
  closes the connection after the answer, and so does a 1xx status: the fuzz test checks
  outcomes, and a client waiting out its timeout would only make it slow.
- The server runs its own event loop in a thread (`running_server()`), so a test can
  call the synchronous CLI (which starts a loop of its own) while it serves.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, quote_plus


def _json_u(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _json_u_upper(text: str) -> str:
    return "".join(f"\\u{ord(c):04X}" for c in text)


def _json_mixed(text: str) -> str:
    """Every other character \\u-escaped, '/' as '\\/': one of the many mixed spellings."""
    out = []
    for i, c in enumerate(text):
        if c == "/":
            out.append("\\/")
        elif i % 2:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


#: The spellings an echoing server may use for a credential it received.
SPELLINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "json_slash": lambda s: s.replace("/", "\\/"),
    "json_u": _json_u,
    "json_u_upper": _json_u_upper,
    "json_mixed": _json_mixed,
    "percent": lambda s: quote(s, safe=""),
    "percent_plus": quote_plus,
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
}

#: Every echo mark a script may use.
ECHOES: tuple[bytes, ...] = tuple(
    f"{{{{{what}:{spelling}}}}}".encode() for what in ("auth", "token") for spelling in SPELLINGS
)

_ECHO = re.compile(rb"\{\{(auth|token):(\w+)\}\}")

Coding = Literal["identity", "gzip", "deflate", "raw_deflate", "gzip_cut", "garbage", "bomb"]
Framing = Literal[
    "length", "short", "long", "huge", "none", "chunked", "chunked_bad", "chunked_cut"
]
End = Literal["keep", "close", "cut", "silent"]

#: How many bytes of padding a "bomb" adds before it is gzipped (about 1 KiB on the wire).
BOMB_BYTES = 1 << 20


@dataclass(frozen=True)
class Answer:
    """One scripted answer.

    - `status` and `reason` are sent as they are (b"200", b"999", b"abc"...);
    - `headers` come after the framing headers this answer's `framing` implies;
    - `coding`: identity, gzip, deflate (zlib), raw_deflate, gzip_cut (the first half of
      a gzip stream), garbage (bytes that are no compressed stream), bomb (the body
      followed by `BOMB_BYTES` spaces, gzipped);
    - `framing`: length (right Content-Length), short/long (one off by a third of the
      body), huge (a Content-Length of 10**30), none (neither length nor chunked: the
      body ends at close), chunked, chunked_bad (a chunk size that is no number),
      chunked_cut (no last chunk);
    - `end`: keep (keep-alive), close (after the answer), cut (close halfway through
      the body), silent (close without answering);
    - `preface`: raw bytes sent before the status line (an interim 1xx, or junk).
    """

    status: bytes = b"200"
    reason: bytes = b"OK"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b'{"status":"OK","placements":[]}'
    coding: Coding = "identity"
    framing: Framing = "length"
    end: End = "keep"
    preface: bytes = b""
    version: bytes = b"HTTP/1.1"


def fill_echoes(template: bytes, authorization: str) -> bytes:
    token = authorization.removeprefix("Bearer ")

    def spell(match: re.Match[bytes]) -> bytes:
        what, spelling = match.group(1).decode(), match.group(2).decode()
        text = authorization if what == "auth" else token
        return SPELLINGS[spelling](text).encode("utf-8", "surrogateescape")

    return _ECHO.sub(spell, template)


def encode_body(body: bytes, coding: Coding) -> bytes:
    match coding:
        case "identity":
            return body
        case "gzip":
            return _gzip(body)
        case "deflate":
            return zlib.compress(body)
        case "raw_deflate":
            c = zlib.compressobj(wbits=-15)
            return c.compress(body) + c.flush()
        case "gzip_cut":
            data = _gzip(body)
            return data[: len(data) // 2]
        case "garbage":
            return b"\x1f\x8b\x08\x00not a compressed stream" + body[:16]
        case "bomb":
            return _gzip(body + b" " * BOMB_BYTES)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=31)
    return c.compress(data) + c.flush()


def frame(answer: Answer, authorization: str) -> tuple[bytes, bytes, bool]:
    """(head, body, close after): the bytes of one answer to a request that carried
    `authorization`."""
    body = encode_body(fill_echoes(answer.body, authorization), answer.coding)
    headers: list[tuple[bytes, bytes]] = []
    close = answer.end != "keep" or answer.status.startswith(b"1")
    third = max(1, len(body) // 3)
    match answer.framing:
        case "length":
            headers.append((b"Content-Length", str(len(body)).encode()))
        case "short":
            headers.append((b"Content-Length", str(max(0, len(body) - third)).encode()))
        case "long":
            headers.append((b"Content-Length", str(len(body) + third).encode()))
            close = True
        case "huge":
            headers.append((b"Content-Length", b"1" + b"0" * 30))
            close = True
        case "none":
            close = True
        case "chunked" | "chunked_bad" | "chunked_cut":
            headers.append((b"Transfer-Encoding", b"chunked"))
            body = _chunked(body, answer.framing)
            close = close or answer.framing == "chunked_cut"
    for name, value in answer.headers:
        headers.append((name, fill_echoes(value, authorization)))
    if close:
        headers.append((b"Connection", b"close"))
    status_line = b" ".join(
        (answer.version, answer.status, fill_echoes(answer.reason, authorization))
    )
    head = answer.preface + status_line + b"\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    return head, body, close


def _chunked(body: bytes, framing: Framing) -> bytes:
    half = len(body) // 2
    chunks = [c for c in (body[:half], body[half:]) if c]
    out = b"".join(f"{len(c):x}".encode() + b"\r\n" + c + b"\r\n" for c in chunks)
    if framing == "chunked_bad":
        return b"zz\r\n" + out + b"0\r\n\r\n"
    if framing == "chunked_cut":
        return out
    return out + b"0\r\n\r\n"


class ScriptedServer:
    """Answers every request with the next answer of its script."""

    def __init__(self) -> None:
        self.script: Sequence[Answer] = (Answer(),)
        self.served = 0
        self.port = 0
        self.last_requests: list[bytes] = []  # the heads of the latest requests, for debugging
        self.writers: set[asyncio.StreamWriter] = set()  # the open connections

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/delivery/retailmedia"

    def play(self, script: Sequence[Answer]) -> None:
        """Serve `script` round-robin from its first answer on."""
        assert script, "a script needs at least one answer"
        self.script = tuple(script)
        self.served = 0
        self.last_requests = []

    def _next(self) -> Answer:
        script = self.script
        answer = script[self.served % len(script)]
        self.served += 1
        return answer

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.last_requests = [*self.last_requests[-7:], head[:300]]
                authorization, length = _request_fields(head)
                if length:
                    await reader.readexactly(length)
                answer = self._next()
                if answer.end == "silent":
                    break
                head_bytes, body, close = frame(answer, authorization)
                if answer.end == "cut":
                    writer.write(head_bytes + body[: len(body) // 2])
                else:
                    writer.write(head_bytes + body)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


def _request_fields(head: bytes) -> tuple[str, int]:
    """(Authorization, Content-Length) of a request head."""
    authorization, length = "", 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"authorization":
            authorization = value.strip().decode("latin-1")
        elif name == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    return authorization, length


@contextmanager
def running_server() -> Iterator[ScriptedServer]:
    """A ScriptedServer on a free loopback port, served by a loop in its own thread."""
    server = ScriptedServer()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: list[asyncio.Server] = []

    async def start() -> None:
        # Request lines carry whole events: a huge one must not overrun the reader.
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, limit=1 << 24)
        server.port = srv.sockets[0].getsockname()[1]
        holder.append(srv)
        ready.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, name="scripted-server", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield server
    finally:

        async def stop() -> None:
            holder[0].close()
            # Closing each connection ends its handler (its read sees EOF); cancelling
            # the handlers instead makes asyncio 3.11 log their CancelledError.
            for writer in list(server.writers):
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
