"""A call that failed, as the Response every transport returns (failures are data), and
its message on one line (records and logs want one line; error texts may span several)."""

from __future__ import annotations

import re
import time

from engine.core.records import Response


def failed(
    sent_at: float, start: float, kind: str, message: str, status: int | None = None
) -> Response:
    latency_ms = (time.perf_counter() - start) * 1000.0
    return Response(status, b"", sent_at, latency_ms, error=message, error_kind=kind)


def one_line(text: str) -> str:
    return " ".join(text.split())


# A library's quote of the server's bytes on a description's line (aiohttp's "Invalid
# HTTP header: b'...'", h11's "illegal status line: bytearray(b'...')", h2's "Invalid
# content-length header: b'...'"): repr() escapes a `\` or `'`, and a token echoed there
# would escape the redaction. Dropped with what follows it.
_QUOTE = re.compile(r"""\s*:?\s*(?:bytearray\()?b?(['"]).*$""")


def unquoted(text: str) -> str:
    """`text` (one line) without a library's quote of the server's bytes."""
    return _QUOTE.sub("", text).rstrip(" :")
