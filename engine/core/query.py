"""Event -> delivery URL and headers (pure; the hot path).

Values are form-URL-encoded (UTF-8, space as `+`, every reserved character escaped, so
`&`, `+`, `/`, `|`, `>` travel as data). The endpoint part and each parameter name are
encoded once and cached; per event only the values are quoted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote_plus

from engine.core.events import Event


# Slotted, not frozen, by measurement: one per call (0.14 us against 0.4 frozen). Never
# mutated.
@dataclass(slots=True)
class Request:
    """One delivery call, without its Authorization header (the transport adds it)."""

    url: str
    headers: Mapping[str, str]


# Name -> `quote(name)=`, filled as names are met; bounded (the API's names are few, an
# input's unknown ones could be many).
_PREFIX: dict[str, str] = {}


def _key_prefix(name: str) -> str:
    prefix = _PREFIX.get(name)
    if prefix is None:
        if len(_PREFIX) >= 4096:
            _PREFIX.clear()
        prefix = _PREFIX[name] = _quote(name) + "="
    return prefix


# Characters quote_plus never escapes: a value made only of them is its own encoding.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch
# What quote_plus(value, safe="") makes of each other ASCII character (space: `+`).
_ASCII_ESCAPES = {
    code: "+" if code == 0x20 else f"%{code:02X}"
    for code in range(128)
    if not _UNRESERVED(chr(code))
}


@lru_cache(maxsize=4096)
def _quote_cached(value: str) -> str:
    return _escape(value)


def _escape(value: str) -> str:
    # An ASCII value maps character by character (translate: 2-3x quote_plus's speed).
    return value.translate(_ASCII_ESCAPES) if value.isascii() else quote_plus(value, safe="")


def _quote(value: str) -> str:
    # Most values (ids, partner ids, event types, page ids, skus) need no escaping: one
    # C-level regex match says so (encode_query makes it in line, before calling this).
    return value if _UNRESERVED(value) else _quote_reserved(value)


def _quote_reserved(value: str) -> str:
    # Short values that do repeat a lot (keywords, categories): a small cache, kept small
    # so memory stays flat over a long run.
    return _quote_cached(value) if len(value) <= 48 else _escape(value)


def encode_query(params: tuple[tuple[str, str], ...]) -> str:
    """`k=v&k=v` form-URL-encoding of the parameters, in their order."""
    prefix, plain = _PREFIX.get, _UNRESERVED
    return "&".join(
        [(prefix(k) or _key_prefix(k)) + (v if plain(v) else _quote_reserved(v)) for k, v in params]
    )


class RequestBuilder:
    """Builds requests for one endpoint; precomputes what every request shares."""

    __slots__ = ("_base", "_default_headers")

    def __init__(
        self, endpoint: str, *, user_agent: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._base = endpoint + ("&" if "?" in endpoint else "?")
        # `headers` (--header, core/headers.py) come after the default User-Agent, which
        # one of them may replace, and before the event's own, which replace them.
        self._default_headers = {"User-Agent": user_agent, **dict(headers)}

    def build(self, event: Event) -> Request:
        headers = dict(self._default_headers)
        headers.update(event.headers)
        return Request(self._base + encode_query(event.params), headers)
