"""The event model's types and rules: parameter names, required ones, Event, Invalid (pure).

engine/core/events.py states the rules and makes events (`make_event`); this module
holds what every part of it shares, so the planned path (core/plans.py) and the general
loop (core/events.py) use the one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
    # The parameters form-URL-encoded, when the key set's plan made them with the event
    # (core/plans.py); "" otherwise, and core/query.py encodes `params`. Not compared:
    # a cache of `params`, not a fact of its own (`replace(event, params=...)` must pass
    # `query=""` with it; replacing seq, source or id keeps it right).
    query: str = field(default="", compare=False, repr=False)


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
    # Bytes of the inputs this reader will never read (a Parquet shard's share of a file is
    # its own row groups): the progress's total is the inputs' size less these.
    bytes_skipped: int = 0
