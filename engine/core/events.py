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

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import cast

from engine.core.values import _SURROGATE, _BadValue, _surrogate, value_text
from engine.core.values import header_problem as header_problem  # re-exported
from engine.core.values import parse_timestamp as parse_timestamp  # re-exported
from engine.core.values import printable as printable  # re-exported

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


# Slotted, not frozen, by measurement: one per input line (0.16 us against 0.67 frozen).
# Never mutated (dataclasses.replace makes a new one).
@dataclass(slots=True)
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


def _getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, object]], tuple[object, ...]]:
    """The values of `keys` as one tuple (itemgetter, in C, but for fewer than two keys)."""
    if len(keys) >= 2:
        return itemgetter(*keys)
    return lambda obj: tuple([obj[key] for key in keys])


class _Plan:
    """What one key set makes of its keys, worked out once (events of one input mostly
    share their keys): its parameter keys in send order, its header keys in input order,
    and per event type whether every required parameter is one of its keys."""

    __slots__ = (
        "complete",
        "event_type",
        "get_headers",
        "get_params",
        "has_timestamp",
        "header_keys",
        "header_names",
        "item",
        "names",
        "partner",
    )

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.names = tuple(sorted((k for k in keys if k not in RESERVED_KEYS), key=_param_order))
        self.get_params = _getter(self.names)
        header_keys = tuple(k for k in keys if k in HEADER_KEYS)
        self.get_headers = _getter(header_keys)
        self.header_keys = header_keys
        self.header_names = tuple(HEADER_KEYS[k] for k in header_keys)
        self.has_timestamp = "timestamp" in keys
        where = {name: i for i, name in enumerate(self.names)}
        self.partner = where.get("criteo-partner-id", -1)
        self.event_type = where.get("event-type", -1)
        self.item = where.get("item", -1)
        self.complete: dict[str, bool] = {}

    def has_required(self, event_type: str) -> bool:
        """Whether the parameters `event_type` requires are all among the keys."""
        known = self.complete.get(event_type)
        if known is None:
            need = ALWAYS_REQUIRED + REQUIRED_BY_TYPE.get(event_type, ())
            known = all(name in self.names for name in need)
            if len(self.complete) < 64:  # event types are few; hostile input's are not
                self.complete[event_type] = known
        return known


# Bounded like _ORDER_CACHE; None: a key holds a lone surrogate (the general loop says so).
_PLANS: dict[tuple[str, ...], _Plan | None] = {}


def _plan_of(keys: tuple[str, ...]) -> _Plan | None:
    if len(_PLANS) >= _ORDER_CACHE_SIZE:
        _PLANS.clear()
    bad = any(not k.isascii() and _surrogate(k) is not None for k in keys)
    plan = _PLANS[keys] = None if bad else _Plan(keys)
    return plan


def _text(key: str, value: object) -> str:
    """`value_text`, "" for absent, the common types first (a list of strings joined in C)."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if kind is int:
        return str(value)
    if kind is list and "" not in value and set(map(type, value)) == {str}:  # type: ignore[operator, call-overload]
        return "|".join(value)  # type: ignore[arg-type]
    return value_text(key, value) or ""


def _planned(
    obj: Mapping[str, object], seq: int, source: str, event_id: str | None, defaults: EventDefaults
) -> Item | None:
    """`make_event` of an event whose values can all be sent, by its key set's plan; None
    when one may not be (then the general loop finds the problem, the same one as ever)."""
    keys = tuple(obj)
    plan = _PLANS[keys] if keys in _PLANS else _plan_of(keys)
    if plan is None:
        return None
    names = plan.names
    try:
        texts = list(map(_text, names, plan.get_params(obj)))
        header_values = plan.get_headers(obj)
        timestamp: float | None = None
        if plan.has_timestamp and (value := obj["timestamp"]) is not None and value != "":
            finite = type(value) is float and math.isfinite(value)
            timestamp = value if finite else parse_timestamp(value)  # type: ignore[assignment]
    except _BadValue:
        return None
    if defaults.partner_id is not None and (plan.partner < 0 or not texts[plan.partner]):
        return None  # the default partner goes in: the general loop puts it in its place
    joined = "".join(texts)
    if not joined.isascii() and _SURROGATE(joined) is not None:
        return None
    try:
        header_text = "".join(header_values)  # type: ignore[arg-type]
    except TypeError:
        return None  # a header value that is not a string
    if "" in header_values or not header_text.isprintable():
        return None  # a control character, a lone surrogate (or a mere non-ASCII one)
    values = cast("tuple[str, ...]", header_values)  # joined: all strings
    # zip's strict=True costs 0.15 us a call here: the plan's lengths match by construction.
    headers = tuple(zip(plan.header_names, values))  # noqa: B905
    if defaults.user_agent is not None or defaults.ip is not None:
        more = list(headers)
        _add_defaults(more, defaults)
        headers = tuple(more)
    if "" in texts:
        params = tuple([(k, t) for k, t in zip(names, texts, strict=True) if t])
    else:
        params = tuple(zip(names, texts))  # noqa: B905
    event_type = texts[plan.event_type] if plan.event_type >= 0 else ""
    partner = texts[plan.partner] if plan.partner >= 0 else ""
    if (
        "" in texts
        or not plan.has_required(event_type)
        or not (partner.isascii() and partner.isdigit())
        or (event_type in SINGLE_ITEM_TYPES and "|" in texts[plan.item])
    ) and (error := validate(dict(params))) is not None:
        return Invalid(seq, source, event_id, error)
    return Event(seq, source, event_id, timestamp, params, headers)


def _add_defaults(headers: list[tuple[str, str]], defaults: EventDefaults) -> None:
    have = {h for h, _ in headers}
    if "User-Agent" not in have and defaults.user_agent is not None:
        headers.append(("User-Agent", defaults.user_agent))
    if "X-Forwarded-For" not in have and defaults.ip is not None:
        headers.append(("X-Forwarded-For", defaults.ip))


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
