"""Key-set plans compiled to Python: the plan's clean case without a loop (pure).

A key set seen often enough gets a function of its own (`compiled`), written for its
keys: the values unpacked by one itemgetter, each converted in line, the parameters,
headers and query built as tuple and string displays. It makes only the clean case (every
value a non-empty string, number or list of strings, headers printable ASCII, the
partner given, the event valid) and returns None for anything else, which the plan's
general code (core/plans.py) then makes as ever. The code holds no key, only numbered
names bound in its namespace: an input's keys are never code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

from engine.core.escape import (
    _SIMPLE,
    _UNRESERVED,
    _key_prefix,
    _quote_reserved,
    _simple_escape,
)
from engine.core.model import ALWAYS_REQUIRED, SINGLE_ITEM_TYPES, Event, EventDefaults
from engine.core.values import _SURROGATE, _BadValue, parse_timestamp


class _Plan(Protocol):
    """What of a key set's plan (core/plans.py) its compiled function uses."""

    names: tuple[str, ...]
    header_keys: tuple[str, ...]
    header_names: tuple[str, ...]
    has_timestamp: bool
    partner: int
    event_type: int
    item: int
    complete: dict[str, bool]

    def get_params(self, obj: Mapping[str, object], /) -> tuple[object, ...]: ...
    def get_headers(self, obj: Mapping[str, object], /) -> tuple[object, ...]: ...
    def has_required(self, event_type: str, /) -> bool: ...


Made = Callable[[Mapping[str, object], int, str, "str | None", EventDefaults], "Event | None"]


#: The most parameter keys a compiled plan has: the generated text grows with the keys
#: (a line of 128k keys, under the 1 MiB line limit, took gigabytes to compile). Real
#: events have a dozen or two; a larger key set keeps the plan's data path.
MAX_KEYS = 64


def compilable(names: tuple[str, ...]) -> bool:
    """Whether a plan with these parameter keys can have its clean case compiled."""
    return len(names) <= MAX_KEYS and all(name in names for name in ALWAYS_REQUIRED)


def _source(plan: _Plan) -> str:
    """The function's text: numbered names only (v: values, t: texts, u: header values)."""
    n, m = len(plan.names), len(plan.header_keys)
    t = [f"t{i}" for i in range(n)]
    u = [f"u{i}" for i in range(m)]
    lines = ["def made(obj, seq, source, event_id, defaults):", *_reading(plan)]
    lines.append(f"    if not ({' and '.join(t)}):")
    lines.append("        return None")
    if m:
        strings = " and ".join(f"type({x}) is str and {x}" for x in u)
        lines.append(f"    if not ({strings}):")
        lines.append("        return None")
        # Printable ASCII only (what a header may hold, and more): deleting it leaves
        # nothing, 2x isprintable's speed. Other text goes to the plan's data path.
        lines.append(f"    header = join(({', '.join(u)},))")
        lines.append("    if not header.isascii() or header.encode().translate(None, PRINTABLE):")
        lines.append("        return None")
    lines.append(f"    joined = join(({', '.join(t)},))")
    lines.append("    if not joined.isascii() and surrogate(joined) is not None:")
    lines.append("        return None")
    kind, partner = f"t{plan.event_type}", f"t{plan.partner}"
    single = f'"|" in t{plan.item}' if plan.item >= 0 else "True"
    lines.append(
        f"    if not ({partner}.isascii() and {partner}.isdigit()"
        f" and (complete.get({kind}) or has_required({kind}))):"
    )
    lines.append("        return None")
    lines.append(f"    if {kind} in SINGLE and {single}:")
    lines.append("        return None")
    return "\n".join([*lines, *_making(n, m)]) + "\n"


def _reading(plan: _Plan) -> list[str]:
    """The values and the timestamp read; a value that cannot be sent returns None."""
    n, m = len(plan.names), len(plan.header_keys)
    lines = ["    try:", f"        {', '.join(f'v{i}' for i in range(n))}, = get_params(obj)"]
    lines += [
        f"        t{i} = v{i} if type(v{i}) is str else str(v{i}) if type(v{i}) is int"
        f" else text(K{i}, v{i})"
        for i in range(n)
    ]
    if m:
        lines.append(f"        {', '.join(f'u{i}' for i in range(m))}, = get_headers(obj)")
    if plan.has_timestamp:
        lines += [
            '        timestamp = obj["timestamp"]',
            "        if type(timestamp) is not float or not isfinite(timestamp):",
            '            if timestamp is None or timestamp == "":',
            "                timestamp = None",
            "            else:",
            "                timestamp = parse_timestamp(timestamp)",
        ]
    else:
        lines.append("        timestamp = None")
    return [*lines, "    except BadValue:", "        return None"]


def _making(n: int, m: int) -> list[str]:
    """The query, then the Event, from the texts t0... and the header values u0..."""
    params = "".join(f"(K{i}, t{i}), " for i in range(n))
    headers = "".join(f"(H{i}, u{i}), " for i in range(m))
    whole = ", ".join(f"Q{i}, t{i}" for i in range(n))
    each = ", ".join(f"Q{i}, t{i} if plain(t{i}) else quote(t{i})" for i in range(n))
    return [
        # Most events' values are all unreserved (ids, skus, types) but for the `|` of a
        # list, the `>` of a category and the spaces of words: one match says so, and the
        # whole query is escaped at once (its names' prefixes hold none of these).
        "    if simple(joined):",
        f"        query = simple_escape(join(({whole},)))",
        "    else:",
        f"        query = join(({each},))",
        f"    headers = ({headers})",
        "    if defaults.user_agent is not None or defaults.ip is not None:",
        "        headers = with_defaults(headers, defaults)",
        f"    return Event(seq, source, event_id, timestamp, ({params}), headers, query)",
    ]


def compiled(
    plan: _Plan,
    text: Callable[[str, object], str],
    with_defaults: Callable[
        [tuple[tuple[str, str], ...], EventDefaults], tuple[tuple[str, str], ...]
    ],
) -> Made | None:
    """The plan's clean case as a function of its own (`compilable(plan.names)`): `text`
    is a value's text, `with_defaults` the headers with the defaults' added (plans.py);
    None when it cannot be compiled."""
    namespace: dict[str, object] = {
        "with_defaults": with_defaults,
        "get_params": plan.get_params,
        "get_headers": plan.get_headers,
        "text": text,
        "isfinite": math.isfinite,
        "parse_timestamp": parse_timestamp,
        "BadValue": _BadValue,
        "surrogate": _SURROGATE,
        "has_required": plan.has_required,
        "complete": plan.complete,  # what has_required knows: a lookup, not a call
        "SINGLE": SINGLE_ITEM_TYPES,
        "plain": _UNRESERVED,
        "simple": _SIMPLE,
        "simple_escape": _simple_escape,
        "quote": _quote_reserved,
        "Event": Event,
        "join": "".join,
        "PRINTABLE": bytes(range(0x20, 0x7F)),
    }
    for i, name in enumerate(plan.names):
        namespace[f"K{i}"] = name
        namespace[f"Q{i}"] = ("&" if i else "") + _key_prefix(name)
    for i, header in enumerate(plan.header_names):
        namespace[f"H{i}"] = header
    try:
        exec(compile(_source(plan), "<key-set plan>", "exec"), namespace)
    except (MemoryError, RecursionError, SyntaxError, ValueError, OverflowError):
        return None  # never fatal: the plan's data path makes the same events
    return namespace["made"]  # type: ignore[return-value]
