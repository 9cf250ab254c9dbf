"""One input value -> its text in a query string or a header (pure).

Rules (engine/core/events.py gives the whole event model):
- Strings as they are; integers and floats as written (the readers keep a float's text as
  a `RawNumber`); booleans as 1/0; lists joined with `|`; null or an empty string means
  absent. Objects, and lists holding anything but scalars, are a `_BadValue`.
- A lone surrogate cannot be UTF-8; a C0 control character or DEL cannot be in a header.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping

from engine.core.errors import ConfigError


class _BadValue(ValueError):
    pass


_SURROGATE = re.compile("[\ud800-\udfff]").search
_CONTROL = re.compile("[\x00-\x1f\x7f]").search


def printable(text: str) -> str:
    """`text` with each lone surrogate written as its escape (`\\ud800`): UTF-8 can carry it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


#: What a terminal would act on rather than show: C0 controls but the line break and
#: the tab, DEL, C1 controls (ESC [ 2 J clears the screen, OSC sets the title, BEL),
#: the line and paragraph separators and the bidi controls (U+202E reverses the text).
_TERMINAL_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
#: The same, and the line break and the tab: what one line of a message must not hold.
_LINE_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str, *, line: bool = False) -> str:
    """`text` to print on a terminal: each control character written as its escape
    (`\x1b`), so a server's words can neither clear the screen nor forge a line.
    `line`: one line (a message), its line breaks and tabs escaped too (`\n`)."""
    if text.isprintable():
        return text
    return (_LINE_CONTROL if line else _TERMINAL_CONTROL).sub(
        lambda m: ascii(m.group())[1:-1], text
    )


def fixed(value: float, decimals: int, *, sign: bool = False) -> str:
    """`value` with `decimals` decimals (a `+` before a positive one with `sign`), in
    exponent form from 1e15 on: an absurd record's 1e308 ms as 1.000e+308, not 309
    digits that widen a report's table."""
    plus = "+" if sign else ""
    if abs(value) < 1e15:
        return f"{value:{plus}.{decimals}f}"
    return f"{value:{plus}.3e}"


def _surrogate(text: str) -> str | None:
    """The first lone surrogate of `text` as `U+D800`, or None (ASCII costs one check)."""
    if text.isascii():
        return None
    found = _SURROGATE(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def utf8_text(what: str, text: str) -> str:
    """`text`, or ConfigError `{what} is not UTF-8 text` when it holds a lone surrogate:
    a byte that is not UTF-8, as Python reads one from argv, the environment or a file
    read with surrogateescape. The one check of the credentials given as text (client
    id and secret, token file, proxy URL); the text itself is never quoted."""
    if _surrogate(text) is not None:
        raise ConfigError(f"{what} is not UTF-8 text")
    return text


def header_problem(text: str) -> str | None:
    """Why `text` cannot be a header value (a lone surrogate, a control character), or None."""
    found = _CONTROL(text)
    if found is not None:
        return f"a control character (U+{ord(found.group()):04X}) that a header cannot carry"
    bad = _surrogate(text)
    return None if bad is None else f"a lone surrogate ({bad}) that UTF-8 cannot carry"


def _scalar(key: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _BadValue(f"parameter {key} is not a finite number")
        return repr(value)
    kind = "an object" if isinstance(value, Mapping) else type(value).__name__
    raise _BadValue(f"parameter {key} must be a string, number, boolean or list, not {kind}")


def value_text(key: str, value: object) -> str | None:
    """The query-string text of one input value; None when the value means absent."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        parts = [_scalar(key, v) for v in value if v is not None]
        text = "|".join(p for p in parts if p != "")
    else:
        text = _scalar(key, value)
    return text or None


def parse_timestamp(value: object) -> float:
    """Epoch seconds (number or numeric string) or ISO 8601 (naive means UTC)."""
    if isinstance(value, bool):
        raise _BadValue("timestamp must be epoch seconds or ISO 8601")
    if isinstance(value, int | float):
        try:
            ts = float(value)
        except OverflowError:  # an integer past a float's range (hundreds of digits)
            raise _BadValue("timestamp is not a finite number") from None
    elif isinstance(value, str):
        try:
            ts = float(value)
        except ValueError:
            try:
                parsed = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                raise _BadValue(
                    f"timestamp {value[:40]!r} is not epoch seconds or ISO 8601"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=_dt.UTC)
            ts = parsed.timestamp()
    else:
        raise _BadValue("timestamp must be epoch seconds or ISO 8601")
    if not math.isfinite(ts):
        raise _BadValue("timestamp is not a finite number")
    return ts
