"""Answer bodies read with a size limit, decompressed here in bounded steps (both clients).

Rules:
- The limit (--max-response-bytes) is on the body as the caller gets it, after
  decompression. A body is read chunk by chunk as the parser hands it over (aiohttp's
  stream pauses the socket when its buffer fills), and reading stops as soon as the
  total passes the limit: no answer, compressed or not, takes more memory than the
  limit (plus a chunk), whatever its Content-Length says.
- Decompression is ours, not aiohttp's (both clients turn `auto_decompress` off): zlib
  inflates at most `_STEP` bytes per call, and the loop gets a turn every `_YIELD_EVERY`
  bytes, so a gzip bomb costs a few milliseconds of CPU in small slices, then stops.
- The call's deadline holds while a body is read and inflated: bytes already buffered
  (a bomb arrives in one read) are not waited for, so a transport that drops the
  connection at its deadline (http1) would not stop the inflating; `deadline` (the
  loop's clock) is checked at every turn given to the loop, and passing it is a
  `timeout` BodyError. (Clients that cancel at their deadline get that cancel at the
  same turns.)
- Content-Encoding: absent or `identity` is the body as it came; `gzip` (`x-gzip`) and
  `deflate` (zlib-wrapped or raw, as servers send both) are inflated; any other value
  (`br`, `zstd`, `gzip, gzip`...) is a protocol failure: we never ask for them. Its
  message quotes the value whole and as it came, or not at all (over 60 characters, or
  not printable ASCII): the records and token messages are redacted after this layer,
  and a secret cut short or re-spelled here (repr's backslash before a quote) would
  escape them.
- Failures raise `BodyError` with a `kind` (an ErrorKind) and a one-line message; a body
  over the limit is `too_large`. Either way the caller drops the connection (the rest
  of the body is still on the wire).
"""

from __future__ import annotations

import asyncio
import re
import zlib
from typing import Protocol

from engine.core.records import ErrorKind

#: What the clients ask for: the codings this module decodes.
ACCEPT_ENCODING = "gzip, deflate"
_STEP = 64 * 1024  # bytes inflated per zlib call
_YIELD_EVERY = 256 * 1024  # inflated bytes between turns given to the event loop
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_CODINGS = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": zlib.MAX_WBITS}
#: The longest Content-Encoding value a message quotes (a longer one is not quoted).
_SHOWN_CODING = 60
_PRINTABLE_ASCII = re.compile("[\x20-\x7e]*").fullmatch


class Chunks(Protocol):
    """A body as it arrives: aiohttp's StreamReader, or the http2 client's raw chunks."""

    async def readany(self) -> bytes: ...


class BodyError(Exception):
    """A body that cannot be had: over the limit, in an unknown coding, or corrupt."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def too_large_message(limit: int) -> str:
    return (
        f"answer larger than {limit} bytes after decompression (--max-response-bytes); "
        "body not kept"
    )


def timed_out() -> BodyError:
    return BodyError(ErrorKind.TIMEOUT, "no complete answer within the call's --timeout")


async def read_body(
    stream: Chunks, content_encoding: str | None, limit: int, deadline: float | None = None
) -> bytes:
    """The whole body of `stream`, decoded; raises BodyError (see the module's rules).
    `deadline`: the call's, on the running loop's clock."""
    if content_encoding is not None:
        wbits = _wbits(content_encoding)
        if wbits is not None:
            return await _inflate(stream, wbits, limit, deadline)
    # The common path: as cheap as StreamReader.read(), plus a length check per chunk.
    chunks = []
    size = 0
    while chunk := await stream.readany():
        size += len(chunk)
        if size > limit:
            raise BodyError(ErrorKind.TOO_LARGE, too_large_message(limit))
        chunks.append(chunk)
    if len(chunks) == 1:
        return chunks[0]
    if deadline is not None and asyncio.get_running_loop().time() >= deadline:
        raise timed_out()
    return b"".join(chunks)


def _wbits(content_encoding: str) -> int | None:
    """zlib's wbits for the coding, None for identity; BodyError for any other."""
    codings = [c for c in content_encoding.lower().replace(" ", "").split(",") if c]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _CODINGS:
        return _CODINGS[codings[0]]
    # Quoted whole and exactly as it came, or not at all: this layer holds no secrets,
    # and the redaction the record and the messages get later finds a secret only in the
    # spellings it knows: a cut excerpt (a token's start), repr's `\'` or a character
    # re-spelled by an escape would escape it. So only printable ASCII is quoted (a
    # coding is a token; a control character, or the latin-1 reading of UTF-8 bytes, is
    # not quoted, and nothing on the line needs escaping).
    value = content_encoding.strip()
    shown = f"'{value}'" if _quotable(value) else f"of {len(value)} characters"
    raise BodyError(
        ErrorKind.PROTOCOL,
        f"answer in an unsupported Content-Encoding {shown} (adbatch asks for gzip, deflate)",
    )


def _quotable(value: str) -> bool:
    return len(value) <= _SHOWN_CODING and _PRINTABLE_ASCII(value) is not None


async def _inflate(stream: Chunks, wbits: int, limit: int, deadline: float | None) -> bytes:
    out: list[bytes] = []
    size = 0
    unyielded = 0
    inflater = None
    loop = asyncio.get_running_loop()
    while data := await stream.readany():
        if inflater is None:
            # "deflate" is zlib-wrapped by the RFC, raw in some servers: a zlib stream
            # starts with a CM nibble of 8 (as aiohttp and browsers tell them apart).
            if wbits == zlib.MAX_WBITS and data[0] & 0x0F != 8:
                wbits = -zlib.MAX_WBITS
            inflater = zlib.decompressobj(wbits)
        while True:
            try:
                piece = inflater.decompress(data, _STEP)
            except zlib.error as exc:
                raise BodyError(ErrorKind.PAYLOAD, f"corrupt compressed body: {exc}") from None
            data = inflater.unconsumed_tail
            if inflater.eof:
                data = inflater.unused_data
                if data and wbits == _GZIP_WBITS:  # gzip members may follow one another
                    inflater = zlib.decompressobj(wbits)
                else:
                    data = b""  # bytes past a deflate stream's end mean nothing
            size += len(piece)
            if size > limit:
                raise BodyError(ErrorKind.TOO_LARGE, too_large_message(limit))
            out.append(piece)
            unyielded += len(piece)
            if unyielded >= _YIELD_EVERY:
                unyielded = 0
                if deadline is not None and loop.time() >= deadline:
                    raise timed_out()
                await asyncio.sleep(0)
            # A full step may leave output pending inside zlib: ask again, input or not.
            if not data and len(piece) < _STEP:
                break
    if inflater is not None and not inflater.eof:
        raise BodyError(ErrorKind.PAYLOAD, "compressed body ends before its end marker")
    return b"".join(out)
