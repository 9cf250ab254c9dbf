"""The event model: one page view, its parameters, headers and validation (pure).

Rules:
- An input object's keys are delivery parameter names (API.md), except the reserved
  keys: `id` (echoed in the output), `timestamp` (epoch seconds or ISO 8601),
  `user-agent`, `referer` and `ip`, which become headers.
- Values: strings as they are; integers and floats as written in the input (the readers
  keep a float's original text); booleans as 1/0; lists joined with `|`; null or an empty
  string means absent. Objects, and lists holding anything but scalars, are invalid.
- Parameters go out in a stable order: the known parameters in API.md order, then
  unknown ones (the API grows) sorted by name.
- An event that lacks a parameter its event type requires is not sent: it becomes an
  `Invalid` naming the parameter.
- Any JSON is an input: a value that cannot become a URL or a header makes the event
  `Invalid`, naming the field. A lone surrogate (an escaped `"\\ud800"` is valid JSON that
  UTF-8 cannot carry) in a key, a value or the `id`; a C0 control character (tab
  included) or DEL in a header value. An `id` holding a lone surrogate is kept with each
  one written as its escape (`a\\ud800b`, backslash and all: `printable`), so the record
  can be written and --resume finds it again.

Where: core/model.py holds the types, the names and `validate`; core/values.py one
value's text; core/plans.py and core/compiled.py the fast paths by key set. Here is
`make_event` and the general key-by-key loop, which decides whenever a fast path steps
aside, so every Invalid names the same first problem.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.core.model import (
    ALWAYS_REQUIRED,
    HEADER_KEYS,
    KNOWN_PARAMS,
    NO_DEFAULTS,
    REQUIRED_BY_TYPE,
    RESERVED_KEYS,
    SINGLE_ITEM_TYPES,
    Event,
    EventDefaults,
    Invalid,
    Item,
    RawNumber,
    ReadCounts,
    _param_order,
    validate,
)
from engine.core.plans import _add_defaults, _planned
from engine.core.values import (
    _BadValue,
    _surrogate,
    header_problem,
    parse_timestamp,
    printable,
    value_text,
)

__all__ = [
    "ALWAYS_REQUIRED",
    "HEADER_KEYS",
    "KNOWN_PARAMS",
    "NO_DEFAULTS",
    "REQUIRED_BY_TYPE",
    "RESERVED_KEYS",
    "SINGLE_ITEM_TYPES",
    "Event",
    "EventDefaults",
    "Invalid",
    "Item",
    "RawNumber",
    "ReadCounts",
    "header_problem",
    "make_event",
    "parse_timestamp",
    "printable",
    "validate",
    "value_text",
]

# Events of one input mostly share their set of keys: sort each key set once. Bounded, so
# inputs whose key sets all differ cost a sort each, never memory.
_ORDER_CACHE: dict[tuple[str, ...], tuple[str, ...]] = {}
_ORDER_CACHE_SIZE = 1024


def _ordered(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    names = tuple(params)
    order = _ORDER_CACHE.get(names)
    if order is None:
        order = tuple(sorted(names, key=_param_order))
        if len(_ORDER_CACHE) >= _ORDER_CACHE_SIZE:
            _ORDER_CACHE.clear()
        _ORDER_CACHE[names] = order
    return tuple([(name, params[name]) for name in order])


def _fields(
    obj: Mapping[str, object],
) -> tuple[dict[str, str], list[tuple[str, str]], float | None]:
    """An event's parameters, headers and timestamp; raises _BadValue for the first key
    (in input order) whose name or value cannot be sent."""
    params: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    timestamp: float | None = None
    for key, value in obj.items():
        if not key.isascii() and (bad := _surrogate(key)) is not None:
            raise _BadValue(
                f"parameter name {printable(key)!r} holds a lone surrogate ({bad}) "
                "that UTF-8 cannot carry"
            )
        if key == "id":
            continue
        if key == "timestamp":
            if value is not None and value != "":
                timestamp = parse_timestamp(value)
            continue
        text = value_text(key, value)
        if text is None:
            continue
        header = HEADER_KEYS.get(key)
        if header is not None:
            if (problem := header_problem(text)) is not None:
                raise _BadValue(f"{key} holds {problem}")
            headers.append((header, text))
        else:
            if (bad := _surrogate(text)) is not None:
                raise _BadValue(
                    f"parameter {key} holds a lone surrogate ({bad}) that UTF-8 cannot carry"
                )
            params[key] = text
    return params, headers, timestamp


def make_event(
    obj: Mapping[str, object],
    *,
    seq: int,
    source: str,
    defaults: EventDefaults = NO_DEFAULTS,
) -> Item:
    """Turn one input object into an Event, or an Invalid saying what is wrong."""
    raw_id = obj.get("id")
    if type(raw_id) is str:  # the common case, without isinstance's ABC check
        event_id: str | None = raw_id
    else:
        event_id = None if raw_id is None or isinstance(raw_id, Mapping | list) else str(raw_id)
    if event_id is not None and not event_id.isascii() and (bad := _surrogate(event_id)):
        message = f"id holds a lone surrogate ({bad}) that UTF-8 cannot carry"
        return Invalid(seq, source, printable(event_id), message)
    # Most events have nothing wrong: their key set's plan, no per-key dispatch.
    planned = _planned(obj, seq, source, event_id, defaults)
    if planned is not None:
        return planned
    try:
        params, headers, timestamp = _fields(obj)
    except _BadValue as exc:
        return Invalid(seq, source, event_id, str(exc))
    if "criteo-partner-id" not in params and defaults.partner_id is not None:
        params["criteo-partner-id"] = defaults.partner_id
    if defaults.user_agent is not None or defaults.ip is not None:
        _add_defaults(headers, defaults)
    error = validate(params)
    if error is not None:
        return Invalid(seq, source, event_id, error)
    return Event(seq, source, event_id, timestamp, _ordered(params), tuple(headers))
