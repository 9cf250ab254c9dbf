"""aiohttp's errors as text: the one place the session client and the token client word
them (engine/net/session_client.py, engine/net/token_client.py).

Rules:
- An error of aiohttp's parser (the server's bytes are not HTTP) is said in our words,
  without the excerpt of those bytes aiohttp quotes: that excerpt is cut short
  (LineTooLong keeps a line's first 100 bytes; llhttp's errors the part of the line in
  one read), and a secret cut short escapes the redaction every message gets later (a
  server echoing the token or the client secret at the start of an 8 KB header line).
  An over-long line reads as the http1 client says it (engine/net/h1conn.py); any other
  parser error keeps llhttp's description of the fault, not the bytes.
- Any other error keeps aiohttp's words (`Type: text`), redacted by the caller.
"""

from __future__ import annotations

import re

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from engine.net.outcome import one_line, unquoted

# LineTooLong's text ("Got more than 8190 bytes when reading: b'...'."), should a
# version of aiohttp hand it over without the exception in the chain.
_TOO_LONG = re.compile(r"Got more than (\d+) bytes when reading")


def client_error_text(exc: aiohttp.ClientError) -> str:
    """`exc` on one line, with no excerpt of the server's bytes (the module's rules)."""
    words = parser_words(exc)
    if words is not None:
        return f"malformed HTTP response: {words}"
    return one_line(f"{type(exc).__name__}: {exc}")


def parser_words(exc: BaseException) -> str | None:
    """Our words for an error of aiohttp's parser behind `exc`, or None when it is not one.

    aiohttp raises ClientResponseError from a copy of the parser's error, itself caused
    by the parser's own (a LineTooLong, a BadHttpMessage): the chain is walked."""
    found: HttpProcessingError | None = None
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is a few links; a loop in one must not hang us
        if seen is None:
            break
        if isinstance(seen, LineTooLong):
            return _too_long(seen.args[1] if len(seen.args) > 1 else None)
        if isinstance(seen, HttpProcessingError):
            found = seen
        seen = seen.__cause__ or seen.__context__
    match = _TOO_LONG.search(str(exc))
    if match is not None:
        return _too_long(match.group(1))
    if found is None:
        return None
    # llhttp's errors: "<description>:\n\n  <the bytes around the fault>\n  ^"
    described = one_line(str(found.message).split("\n\n", 1)[0]).rstrip(":")
    return unquoted(described) or type(found).__name__


def _too_long(limit: object) -> str:
    if str(limit).isdigit():
        return f"a header line longer than {limit} bytes"
    return "a header line longer than aiohttp's limit"
