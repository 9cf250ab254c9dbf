"""One keep-alive HTTP/1.1 connection: an `asyncio.BufferedProtocol` on httptools' llhttp.

Why this shape (issue 18): aiohttp's `ResponseHandler` and `StreamReader` cost about
19 µs a call against ~8 µs for a raw httptools protocol, and uvloop's TLS layer
allocates a 256 KiB buffer per read for a plain `asyncio.Protocol` (page faults ate a
third of the HTTPS CPU). A BufferedProtocol reads into one preallocated buffer per
connection, for plain TCP and TLS alike.

Rules:
- One request at a time: `send(head)` puts the head in the pool's outbox (written with
  the other heads of this turn of the loop: engine/net/outbox.py) and returns the call's
  future. It resolves after the read that completed the answer (an `Answer`) or, for an
  answer with a Content-Encoding (`stream` set), after the read that completed its head
  (an `Answer` with no body): the caller then reads the body through `readany()`
  (engine.net.bodies inflates it in bounded steps, under the limit; reading pauses
  while 256 KiB wait unread).
- The future resolves only once the whole read is parsed: garbage right behind an
  answer in the same read fails that call (`protocol`), as aiohttp's parser did; a
  whole answer behind it (a stray 408) is parsed into nothing and spoils the connection.
- A plain body over `max_body` fails the call `too_large` with its status and spoils
  the connection (the rest is still on the wire).
- Framing is llhttp's (Content-Length, chunked, 1xx, HTTP/1.0, `Connection: close`);
  a body delimited by the end of the connection is complete at a clean EOF.
- Any byte received while no answer is awaited (idle in the pool, or after the answer
  was complete) spoils the connection: the pool never hands it out again, since the
  next call would read those bytes as its own answer.
- An answer keeps the headers the client reads (`KEPT`: the framing's, the body's
  coding, Retry-After); the others count against the head limits, undecoded.
- Failures are `HttpError`s; a connection lost before the answer completed is `Lost`,
  saying whether any byte of the answer came (a stale keep-alive connection, closed
  before answering, is resent once by the client).
"""

from __future__ import annotations

import asyncio
import collections
import math
from typing import NamedTuple, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from engine.core.records import ErrorKind
from engine.net.bodies import too_large_message
from engine.net.outbox import Outbox
from engine.net.outcome import one_line

_BUFFER = 64 * 1024  # bytes read per call of buffer_updated
_HIGH_WATER = 256 * 1024  # unread coded body bytes before reading pauses
# An answer's head: one header line at most (aiohttp's limit, kept when the client
# changed), and the whole head (1xx heads included) at most. A head that never ends
# would otherwise grow llhttp's buffers until the call's deadline. A chunked answer's
# trailer section has the same limits (httptools grows a trailer line that never ends
# by copying it whole at each read: memory, and a loop blocked past the deadline).
MAX_FIELD = 8190
MAX_HEAD = 64 * 1024
# The headers an answer keeps: what the framing, the body's coding and the retry policy
# read. The others are counted against the limits and dropped undecoded (0.4 µs less
# per answer than decoding five of them; issue 18).
KEPT = frozenset((b"content-length", b"content-encoding", b"transfer-encoding", b"retry-after"))
_LONG_HEAD = f"a head longer than {MAX_HEAD} bytes"
_LONG_TRAILER = f"a trailer section longer than {MAX_HEAD} bytes"

# Where the current exchange is.
# _STRAY: the answer is whole and another began behind it (nobody asked for it).
_IDLE, _WAIT, _HEAD, _BODY, _DONE, _STRAY = range(6)


class HttpError(Exception):
    """One call failed without a usable HTTP answer; `kind` says how, `status` is the
    answer's status when one came (too_large only)."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


class Lost(HttpError):
    """The connection ended before the answer was complete. `answered`: some byte of
    the answer had come; `cause`: the transport's exception (None for a clean EOF)."""

    def __init__(
        self, kind: str, message: str, *, answered: bool, cause: BaseException | None
    ) -> None:
        super().__init__(kind, message)
        self.answered = answered
        self.cause = cause


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: dict[str, str]  # KEPT's names in lower case, the first of a repeated name


class _Stop(Exception):
    """Raised from a parser callback to stop parsing the read (the flags say why)."""


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "_answer",
        "_body_waiter",
        "_buffer",
        "_chunks",
        "_closed",
        "_error",
        "_head_bytes",
        "_head_error",
        "_head_size",
        "_paused",
        "_size",
        "_tail",
        "_too_large",
        "_until_eof",
        "_view",
        "answered",
        "deadline",
        "headers",
        "keep",
        "lost",
        "max_body",
        "outbox",
        "parser",
        "spoiled",
        "state",
        "status",
        "stream",
        "transport",
        "waiter",
    )

    def __init__(self, max_body: int, outbox: Outbox) -> None:
        self.max_body = max_body
        self.outbox = outbox
        self.deadline = math.inf  # the call's (the pool's `watch`); inf between calls
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self._buffer = bytearray(_BUFFER)
        self._view = memoryview(self._buffer)
        self.waiter: asyncio.Future[Answer] | None = None
        self._answer: Answer | None = None  # the answer, kept when a stray one began
        self.state = _IDLE
        self.lost = False  # connection_lost was called
        self.spoiled = False  # bytes nobody asked for, or a broken exchange: never reuse
        self.keep = False  # the last answer lets the connection carry another call
        self.answered = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self.stream = False  # a coded body, read through readany()
        self._until_eof = False
        self._too_large = False
        self._head_bytes = 0  # bytes read while the answer's head was not complete
        self._head_size = 0  # the answer's header lines, as parsed
        self._head_error: str | None = None  # why the head was refused
        self._tail = -1  # bytes since the last chunk's header that were not body; -1: none
        self._paused = False
        self._error: HttpError | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    # -- the call's side ------------------------------------------------------------

    def send(self, head: bytes) -> asyncio.Future[Answer]:
        """Write one request head; the future is the answer (see the module's rules)."""
        transport = self.transport
        assert transport is not None  # the pool hands out connected ones only
        self.state = _WAIT
        self.answered = False
        self.headers = {}
        self._chunks.clear()
        self._size = 0
        self.stream = False
        self._until_eof = False
        self._error = None
        self._head_bytes = self._head_size = 0
        self._tail = -1
        waiter = self.waiter = self.outbox.loop.create_future()
        self.outbox.put(transport, head)
        return waiter

    def finish(self) -> None:
        """The call is over (its answer taken): the connection rests until the next."""
        if self.state >= _DONE:
            self.state = _IDLE
        self._answer = None
        self.waiter = None
        self.deadline = math.inf

    def expire(self) -> None:
        """The call's deadline: fail it and drop the connection, never reused half-read."""
        self._fail(HttpError(ErrorKind.TIMEOUT, "deadline"))
        if self.transport is not None:
            self.transport.abort()

    async def readany(self) -> bytes:
        """The next piece of a coded body; b"" at its end (engine.net.bodies.Chunks)."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.state >= _DONE:
                return b""
            self._body_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._paused and self._size < _HIGH_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    async def wait_closed(self) -> None:
        if self.lost:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed)

    # -- asyncio's side -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses: no isinstance)
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        state = self.state
        if state == _IDLE or state >= _DONE:
            self.spoiled = True  # an answer nobody asked for (or part of one, or garbage)
            return
        self.answered = True
        size = self._size  # body bytes this read adds: self._size - size after it
        try:
            self.parser.feed_data(self._view[:nbytes])
        except HttpParserUpgrade:
            self._broken(HttpError(ErrorKind.PROTOCOL, "malformed HTTP response: an upgrade"))
            return
        except HttpParserError as exc:
            if self._too_large:
                message = too_large_message(self.max_body)
                self._broken(HttpError(ErrorKind.TOO_LARGE, message, self.status))
                return
            if self._head_error is not None:
                message = f"malformed HTTP response: {self._head_error}"
                self._broken(HttpError(ErrorKind.PROTOCOL, message))
                return
            # Garbage fails the call even right behind a whole answer: as aiohttp did.
            self._broken(HttpError(ErrorKind.PROTOCOL, _malformed(exc)))
            return
        if self.state in (_WAIT, _HEAD):  # the head is still not complete
            self._head_bytes += nbytes
            if self._head_bytes > MAX_HEAD:  # every byte read so far is the head's
                message = f"malformed HTTP response: {_LONG_HEAD}"
                self._broken(HttpError(ErrorKind.PROTOCOL, message))
                return
        elif self._tail >= 0 and self.state == _BODY:
            # Within a chunk or after the last one: what is not body is framing or, after
            # the last chunk, the trailer section (which a read of body never follows).
            self._tail += nbytes - (self._size - size)
            if self._tail > MAX_HEAD:
                message = f"malformed HTTP response: {_LONG_TRAILER}"
                self._broken(HttpError(ErrorKind.PROTOCOL, message))
                return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self._resolve(waiter)
        elif self.stream:
            self._wake_body()
            if self._size > _HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def _resolve(self, waiter: asyncio.Future[Answer]) -> None:
        state = self.state
        if state == _DONE or (self.stream and state == _BODY):
            waiter.set_result(self._whole())
        elif state == _STRAY:
            assert self._answer is not None
            waiter.set_result(self._answer)

    def _whole(self) -> Answer:
        # A coded body is read by the caller through readany(): b"" here.
        if self.stream:
            return Answer(self.status, b"", self.headers)
        body = b"".join(self._chunks)  # (one chunk: that chunk itself, not a copy)
        self._chunks.clear()  # not kept until the connection's next call: a body's worth each
        return Answer(self.status, body, self.headers)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        state = self.state
        if state == _BODY and self._until_eof and exc is None:
            self.state = _DONE  # a body delimited by the end of the connection
            self.keep = False
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                self._resolve(waiter)
            self._wake_body()
        elif state in (_WAIT, _HEAD, _BODY):
            self._fail(_lost(state, exc, self.answered))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # -- the parser's callbacks (httptools) -----------------------------------------

    def on_message_begin(self) -> None:
        if self.state >= _DONE:
            # Another answer right behind this one: parsed on (garbage fails the call),
            # into nothing. The connection is never reused.
            if self.state == _DONE:
                self._answer = self._whole()
                self.headers = {}
                self.state = _STRAY
            self.spoiled = True
            return
        self.state = _HEAD

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_size += size + 4  # ": " and CRLF
        if size > MAX_FIELD:
            self._head_error = f"a header line longer than {MAX_FIELD} bytes"
            raise _Stop
        if self._head_size > MAX_HEAD:
            self._head_error = _LONG_TRAILER if self._tail >= 0 else _LONG_HEAD
            raise _Stop
        name = name.lower()
        if name in KEPT:
            self.headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self.state == _STRAY:
            return
        self.status = status = self.parser.get_status_code()
        if status < 100:  # llhttp reads any three digits; 000-099 is no HTTP status
            self._head_error = f"status {status:03d} is not an HTTP status"
            raise _Stop
        if status < 200:  # 1xx: an interim answer (101, an upgrade, fails in feed_data)
            return
        self.state = _BODY
        headers = self.headers
        self.stream = "content-encoding" in headers
        if "content-length" not in headers:
            coding = headers.get("transfer-encoding", "")
            self._until_eof = not coding.rstrip().lower().endswith("chunked")

    def on_chunk_header(self) -> None:
        # The last chunk's header (size 0) is followed by the trailer section: counted
        # from here (buffer_updated), its lines against the head's limits (on_header).
        self._tail = 0
        self._head_size = 0

    def on_chunk_complete(self) -> None:
        self._tail = -1

    def on_body(self, body: bytes) -> None:
        if self.state == _STRAY:
            return
        self._chunks.append(body)
        self._size += len(body)
        if self._size > self.max_body and not self.stream:
            self._too_large = True
            raise _Stop

    def on_message_complete(self) -> None:
        if self.state == _STRAY:
            return
        if self.status < 200:
            self.state = _WAIT  # the real answer follows
            self.headers = {}
            return
        self.state = _DONE
        self.keep = self.parser.should_keep_alive()

    # -- failures -------------------------------------------------------------------

    def _broken(self, error: HttpError) -> None:
        self.spoiled = True
        self._fail(error)

    def _fail(self, error: HttpError) -> None:
        self.keep = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif self.stream and self.state < _DONE and self._error is None:
            self._error = error
            self._wake_body()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _lost(state: int, exc: BaseException | None, answered: bool) -> Lost:
    if state == _BODY:
        kind, message = ErrorKind.PAYLOAD, "incomplete response body: "
        message += "the server closed the connection" if exc is None else _reason(exc)
    elif exc is None:
        kind, message = ErrorKind.DISCONNECTED, "server closed the connection without answering"
    else:
        kind, message = ErrorKind.NETWORK, f"network error: {_reason(exc)}"
    return Lost(kind, message, answered=answered, cause=exc)


def _reason(exc: BaseException) -> str:
    reason = exc.strerror if isinstance(exc, OSError) else None
    return one_line(reason or str(exc) or type(exc).__name__)


def _malformed(exc: HttpParserError) -> str:
    return one_line(f"malformed HTTP response: {exc or type(exc).__name__}")
