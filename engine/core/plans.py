"""Events by their key set's plan: the fast path of `make_event` (pure).

Events of one input mostly share their set of keys. What a key set makes of its keys is
worked out once (`_Plan`): its parameter keys in send order, its header keys, which
parameters each event type requires. An event whose values can all be sent is made by
the plan; any doubt (a value that cannot be sent, a control character, a lone surrogate,
a default partner to put in) returns None, and `make_event`'s general loop makes it,
finding the same problem as ever. A key set met COMPILE_AFTER times gets its clean case
compiled (core/compiled.py); what that steps aside from, the plan's data path makes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import cast

from engine.core.compiled import Made, compilable, compiled
from engine.core.model import (
    ALWAYS_REQUIRED,
    HEADER_KEYS,
    REQUIRED_BY_TYPE,
    RESERVED_KEYS,
    SINGLE_ITEM_TYPES,
    Event,
    EventDefaults,
    Invalid,
    Item,
    _param_order,
    validate,
)
from engine.core.values import _SURROGATE, _BadValue, _surrogate, parse_timestamp, value_text

_PLANS_SIZE = 1024
#: Events of a key set made by its plan's data before the plan is compiled.
COMPILE_AFTER = 16


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
        "made",
        "names",
        "partner",
        "uses",
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
        self.made: Made | None = None  # the compiled clean case, once the key set is common
        self.uses = 0 if compilable(self.names) else -1

    def has_required(self, event_type: str) -> bool:
        """Whether the parameters `event_type` requires are all among the keys."""
        known = self.complete.get(event_type)
        if known is None:
            need = ALWAYS_REQUIRED + REQUIRED_BY_TYPE.get(event_type, ())
            known = all(name in self.names for name in need)
            if len(self.complete) < 64:  # event types are few; hostile input's are not
                self.complete[event_type] = known
        return known


# Bounded (inputs whose key sets all differ cost a plan each, never memory). None: a
# key holds a lone surrogate (the general loop says so).
_PLANS: dict[tuple[str, ...], _Plan | None] = {}


def _plan_of(keys: tuple[str, ...]) -> _Plan | None:
    if len(_PLANS) >= _PLANS_SIZE:
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
    try:
        plan = _PLANS[keys]  # one lookup: a tuple's hash is not cached
    except KeyError:
        plan = _plan_of(keys)
    if plan is None:
        return None
    if plan.made is not None:
        made = plan.made(obj, seq, source, event_id, defaults)
        if made is not None:
            return made
    elif plan.uses >= 0:
        # Compiling costs ~0.1 ms: a key set earns it by being common, so inputs whose
        # key sets all differ never pay it.
        plan.uses += 1
        if plan.uses >= COMPILE_AFTER:
            plan.made = compiled(plan, _text, _with_defaults)
            if plan.made is None:
                plan.uses = -1  # not compiled after all: the data path, from now on
    return _by_plan(obj, plan, seq, source, event_id, defaults)


def _by_plan(
    obj: Mapping[str, object],
    plan: _Plan,
    seq: int,
    source: str,
    event_id: str | None,
    defaults: EventDefaults,
) -> Item | None:
    """`_planned` by the plan's data: any event of its key set, None on any doubt."""
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
        headers = _with_defaults(headers, defaults)
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


def _with_defaults(
    headers: tuple[tuple[str, str], ...], defaults: EventDefaults
) -> tuple[tuple[str, str], ...]:
    more = list(headers)
    _add_defaults(more, defaults)
    return tuple(more)


def _add_defaults(headers: list[tuple[str, str]], defaults: EventDefaults) -> None:
    have = {h for h, _ in headers}
    if "User-Agent" not in have and defaults.user_agent is not None:
        headers.append(("User-Agent", defaults.user_agent))
    if "X-Forwarded-For" not in have and defaults.ip is not None:
        headers.append(("X-Forwarded-For", defaults.ip))
