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
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

ALWAYS_REQUIRED: tuple[str, ...] = (
    "criteo-partner-id",
    "retailer-visitor-id",
    "event-type",
    "page-id",
)

REQUIRED_BY_TYPE: Mapping[str, tuple[str, ...]] = {
    "viewHome": (),
    "viewSearchResult": ("keywords",),
    "viewSearchBar": ("keywords",),
    "viewCategory": ("category",),
    "viewCategoryMenu": ("category",),
    "viewItem": ("item", "price"),
    "viewFavorites": ("item",),
    "viewBasket": ("item", "quantity"),
    "trackTransaction": ("item", "price"),
    "addToCart": ("item", "page-uid"),
    "aiAssistant": ("keywords",),
}

#: Event types whose `item` must be a single product.
SINGLE_ITEM_TYPES: frozenset[str] = frozenset({"addToCart"})

#: Known parameters, in the order they are sent.
KNOWN_PARAMS: tuple[str, ...] = (
    *ALWAYS_REQUIRED,
    "customer-id",
    "keywords",
    "category",
    "item",
    "parent-item",
    "price",
    "quantity",
    "availability",
    "transaction-id",
    "page-uid",
    "filters",
    "item-whitelist",
    "regionId",
    "environment",
    "nolog",
    "email",
    "gdpr",
    "gdpr_consent",
    "block",
    "list-size",
    "page-number",
)
_KNOWN_RANK = {name: i for i, name in enumerate(KNOWN_PARAMS)}

#: Reserved keys that are not query parameters; the header ones map to their header.
HEADER_KEYS: Mapping[str, str] = {
    "user-agent": "User-Agent",
    "referer": "Referer",
    "ip": "X-Forwarded-For",
}
RESERVED_KEYS: frozenset[str] = frozenset({"id", "timestamp", *HEADER_KEYS})


class RawNumber(str):
    """A number's text exactly as the input wrote it (e.g. `12.50`, `1e3`)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EventDefaults:
    """Values for events that lack them."""

    partner_id: str | None = None
    user_agent: str | None = None
    ip: str | None = None


NO_DEFAULTS = EventDefaults()


@dataclass(frozen=True, slots=True)
class Event:
    """A valid page view, ready to become a delivery call."""

    seq: int
    source: str
    id: str | None
    timestamp: float | None
    params: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Invalid:
    """An input line that is not a valid event; it is answered with an error record."""

    seq: int
    source: str
    id: str | None
    error: str


Item = Event | Invalid


class _BadValue(ValueError):
    pass


_SURROGATE = re.compile("[\ud800-\udfff]").search
_CONTROL = re.compile("[\x00-\x1f\x7f]").search


def printable(text: str) -> str:
    """`text` with each lone surrogate written as its escape (`\\ud800`): UTF-8 can carry it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _surrogate(text: str) -> str | None:
    """The first lone surrogate of `text` as `U+D800`, or None (ASCII costs one check)."""
    if text.isascii():
        return None
    found = _SURROGATE(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


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
        ts = float(value)
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


def _param_order(name: str) -> tuple[int, str]:
    return (_KNOWN_RANK.get(name, len(KNOWN_PARAMS)), name)


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


# What one key set makes of its keys, worked out once (events of one input mostly share
# their keys): the parameter keys in their send order, the header keys in input order
# with their header, whether a timestamp is there. None: a key holds a lone surrogate
# (the general loop says so). Bounded like _ORDER_CACHE.
_Plan = tuple[tuple[str, ...], tuple[tuple[str, str], ...], bool]
_PLANS: dict[tuple[str, ...], _Plan | None] = {}


def _plan(names: tuple[str, ...]) -> _Plan | None:
    if any(_surrogate(name) is not None for name in names):
        return None
    params = [n for n in names if n not in RESERVED_KEYS]
    headers = tuple((n, HEADER_KEYS[n]) for n in names if n in HEADER_KEYS)
    return tuple(sorted(params, key=_param_order)), headers, "timestamp" in names


def _fields_fast(
    obj: Mapping[str, object],
) -> tuple[dict[str, str], list[tuple[str, str]], float | None] | None:
    """`_fields` of an event without a problem, its parameters already in send order; None
    when there may be one (then `_fields` finds it, the same one as ever)."""
    names = tuple(obj)
    plan = _PLANS.get(names, False)
    if plan is False:
        if len(_PLANS) >= _ORDER_CACHE_SIZE:
            _PLANS.clear()
        plan = _PLANS[names] = _plan(names)
    if plan is None:
        return None
    param_keys, header_keys, has_timestamp = plan  # type: ignore[misc]
    try:
        params: dict[str, str] = {}
        for key in param_keys:
            value = obj[key]
            kind = type(value)
            if kind is str:
                if value:
                    params[key] = value  # type: ignore[assignment]
            elif kind is int:  # not a bool: the type itself
                params[key] = str(value)
            elif text := value_text(key, value):
                params[key] = text
        headers: list[tuple[str, str]] = []
        for key, header in header_keys:
            value = obj[key]
            text = value if type(value) is str else value_text(key, value)
            if text:
                headers.append((header, text))
        timestamp: float | None = None
        if has_timestamp and (value := obj["timestamp"]) is not None and value != "":
            if type(value) is float and math.isfinite(value):
                timestamp = value
            else:
                timestamp = parse_timestamp(value)
    except _BadValue:
        return None
    joined = "".join(params.values())
    if not joined.isascii() and _SURROGATE(joined) is not None:
        return None
    if not "".join([t for _, t in headers]).isprintable() and any(
        header_problem(t) is not None for _, t in headers
    ):
        return None
    return params, headers, timestamp


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
    event_id = None if raw_id is None or isinstance(raw_id, Mapping | list) else str(raw_id)
    if event_id is not None and not event_id.isascii() and (bad := _surrogate(event_id)):
        message = f"id holds a lone surrogate ({bad}) that UTF-8 cannot carry"
        return Invalid(seq, source, printable(event_id), message)
    # Most events have nothing wrong: one pass over the values, no per-key dispatch.
    fields = _fields_fast(obj)
    in_order = fields is not None
    if fields is None:
        try:
            fields = _fields(obj)
        except _BadValue as exc:
            return Invalid(seq, source, event_id, str(exc))
    params, headers, timestamp = fields
    if "criteo-partner-id" not in params and defaults.partner_id is not None:
        params["criteo-partner-id"] = defaults.partner_id
        in_order = False
    if defaults.user_agent is not None or defaults.ip is not None:
        have = {h for h, _ in headers}
        if "User-Agent" not in have and defaults.user_agent is not None:
            headers.append(("User-Agent", defaults.user_agent))
        if "X-Forwarded-For" not in have and defaults.ip is not None:
            headers.append(("X-Forwarded-For", defaults.ip))
    error = validate(params)
    if error is not None:
        return Invalid(seq, source, event_id, error)
    ordered = tuple(params.items()) if in_order else _ordered(params)
    return Event(seq, source, event_id, timestamp, ordered, tuple(headers))


def validate(params: Mapping[str, str]) -> str | None:
    """The first problem with an event's parameters, or None when it can be sent."""
    event_type = params.get("event-type")
    required = ALWAYS_REQUIRED + REQUIRED_BY_TYPE.get(event_type or "", ())
    for name in required:
        if not params.get(name):
            suffix = f" for event-type {event_type}" if event_type and name != "event-type" else ""
            return f"missing required parameter {name}{suffix}"
    partner = params["criteo-partner-id"]
    if not (partner.isascii() and partner.isdigit()):
        return f"criteo-partner-id must be an integer, got {partner[:40]!r}"
    if event_type in SINGLE_ITEM_TYPES and "|" in params["item"]:
        return f"event-type {event_type} takes a single item, got a list"
    return None


@dataclass(slots=True)
class ReadCounts:
    """What the readers skipped (reported in the summary)."""

    blank_lines: int = 0
    records: int = 0  # every record read, kept or not (counted by shard filters)
    # Bytes taken from regular input files so far (gzip: compressed bytes), read by the
    # progress display from another thread: a position, never exact mid-buffer.
    bytes_read: int = 0
