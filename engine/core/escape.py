"""Form-URL-encoding of parameter names and values, as quote_plus(safe="") (pure).

UTF-8, space as `+`, every reserved character escaped, so `&`, `+`, `/`, `|`, `>` travel
as data. Shared by the query builder (core/query.py) and the key-set plans that encode
an event's query as they make it (core/plans.py).
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote_plus

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


# Unreserved but for the `|` of lists (`sku1|sku2`), the `>` of category paths (`1>2`)
# and the spaces of words: the common reserved characters, escaped by `_simple_escape`.
_SIMPLE = re.compile(r"[A-Za-z0-9_.~|> -]*").fullmatch


def _simple_escape(text: str) -> str:
    """quote_plus(text, safe="") of a `_SIMPLE` text (or of a query of such values: its
    `&name=` prefixes hold none of these); no `+` or `%` in it, so the replaces cannot meet."""
    return text.replace("|", "%7C").replace(">", "%3E").replace(" ", "+")


def _quote_reserved(value: str) -> str:
    if _SIMPLE(value):
        return _simple_escape(value)
    # Short values that do repeat a lot (keywords, categories): a small cache, kept small
    # so memory stays flat over a long run.
    return _quote_cached(value) if len(value) <= 48 else _escape(value)
