"""`--header 'Name: value'`: the extra headers of every delivery call, parsed and checked (pure).

Rules:
- A name is an RFC 9110 token (letters, digits and ``!#$%&'*+-.^_`|~``); a value is
  whatever a header can carry (no control character, CR, LF or tab; no lone
  surrogate: events.header_problem), surrounding spaces dropped; it may be empty.
- Refused, because adbatch owns them: Authorization (the token's), Host (the
  endpoint's), the framing and connection headers (Content-Length, Transfer-Encoding,
  Connection, Keep-Alive, TE, Trailer, Upgrade, Proxy-Connection), Proxy-Authorization
  (the proxy URL's credentials) and Accept-Encoding (adbatch decodes what it asks for).
- A name given twice (in any case) is refused: which one would win is a guess.
- User-Agent, Referer and X-Forwarded-For are spelled as the events spell them, so an
  event's own `user-agent`, `referer` or `ip` still wins (core/query.py).
Every problem is a ConfigError naming the header, on one line.
"""

from __future__ import annotations

import re

from engine.core.errors import ConfigError
from engine.core.events import header_problem
from engine.core.shown import quoted

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch

_REFUSED = {
    "authorization": "the bearer token's (--token, --client-id)",
    "host": "the endpoint's (--endpoint)",
    "content-length": "the framing's",
    "transfer-encoding": "the framing's",
    "connection": "the connection's",
    "keep-alive": "the connection's",
    "proxy-connection": "the connection's",
    "te": "the connection's",
    "trailer": "the framing's",
    "upgrade": "the connection's",
    "proxy-authorization": "the proxy's (user:password@ in the proxy URL)",
    "accept-encoding": "adbatch's (it decodes what it asks for)",
}

#: The spellings the events use (events.make_event), so that theirs replace these.
_EVENT_SPELLING = {
    "user-agent": "User-Agent",
    "referer": "Referer",
    "x-forwarded-for": "X-Forwarded-For",
}


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value` as (name, value); raises ConfigError saying what is wrong."""
    if not isinstance(text, str):
        raise ConfigError(f"--header must be 'Name: value', got {quoted(text)}")
    name, colon, value = text.partition(":")
    shown = name[:60] if name.isprintable() else repr(name[:60])
    if not colon:  # all of it may be the value (`X-Api-Key 123`): not quoted
        raise ConfigError("--header must be 'Name: value'; one given has no colon")
    if not _TOKEN(name):
        raise ConfigError(
            f"--header name {shown!r} is not a header name (letters, digits and "
            "!#$%&'*+-.^_`|~ only, no spaces)"
        )
    why = _REFUSED.get(name.lower())
    if why is not None:
        raise ConfigError(f"--header {name}: this header is {why}; it cannot be set")
    value = value.strip(" ")
    if (problem := header_problem(value)) is not None:
        raise ConfigError(f"--header {name}: the value holds {problem}")
    return _EVENT_SPELLING.get(name.lower(), name), value


def parse_headers(texts: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    """Every `--header`, parsed, in order; a name given twice is a ConfigError."""
    if isinstance(texts, str):  # header = "X: y" in a config file: one header
        texts = [texts]
    pairs = tuple(parse_header(text) for text in texts)
    seen: set[str] = set()
    for name, _ in pairs:
        if name.lower() in seen:
            raise ConfigError(f"--header {name} is given twice; give it once")
        seen.add(name.lower())
    return pairs
