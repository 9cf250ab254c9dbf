"""The event model: values, reserved keys, validation per event type (pure)."""

from __future__ import annotations

import pytest

from engine.core.events import (
    REQUIRED_BY_TYPE,
    Event,
    EventDefaults,
    Invalid,
    RawNumber,
    make_event,
    parse_timestamp,
)
from engine.core.records import invalid

BASE = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "v-1",
    "page-id": "viewHome_API_desktop",
}

FULL_FIELDS = {
    "keywords": "shoes",
    "category": "1>2>3",
    "item": "sku1",
    "price": 9.99,
    "quantity": 2,
    "page-uid": "uid-1",
}


def _event(**fields: object) -> Event | Invalid:
    return make_event({**BASE, **fields}, seq=3, source="f.jsonl:4")


@pytest.mark.parametrize(
    ("event_type", "missing"),
    [
        pytest.param(t, r, id=f"{t}-needs-{r}")
        for t, required in REQUIRED_BY_TYPE.items()
        for r in required
    ],
)
def test_each_required_parameter_is_checked(event_type: str, missing: str) -> None:
    fields = {k: v for k, v in FULL_FIELDS.items() if k != missing}
    item = _event(**{"event-type": event_type, **fields})
    assert isinstance(item, Invalid)
    assert item.error == f"missing required parameter {missing} for event-type {event_type}"
    assert (item.seq, item.source) == (3, "f.jsonl:4")


@pytest.mark.parametrize("event_type", list(REQUIRED_BY_TYPE))
def test_every_event_type_is_valid_with_its_fields(event_type: str) -> None:
    item = _event(**{"event-type": event_type, **FULL_FIELDS})
    assert isinstance(item, Event)


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        pytest.param(
            {"event-type": "viewHome"},
            "missing required parameter criteo-partner-id for event-type viewHome",
            id="no-partner",
        ),
        pytest.param(
            {**BASE, "event-type": "viewHome", "page-id": ""},
            "missing required parameter page-id for event-type viewHome",
            id="empty-page-id",
        ),
        pytest.param(
            {**BASE, "event-type": None},
            "missing required parameter event-type",
            id="null-event-type",
        ),
        pytest.param(
            {**BASE, "event-type": "viewHome", "criteo-partner-id": "12a"},
            "criteo-partner-id must be an integer, got '12a'",
            id="partner-not-int",
        ),
        pytest.param(
            {**BASE, "event-type": "viewItem", "item": "a", "price": {"a": 1}},
            "parameter price must be a string, number, boolean or list, not an object",
            id="price-object",
        ),
        pytest.param(
            {**BASE, "event-type": "viewHome", "keywords": [["x"]]},
            "parameter keywords must be a string, number, boolean or list, not list",
            id="nested-list",
        ),
        pytest.param(
            {**BASE, "event-type": "addToCart", "item": ["a", "b"], "page-uid": "u"},
            "event-type addToCart takes a single item, got a list",
            id="addtocart-two",
        ),
        pytest.param(
            {**BASE, "event-type": "viewHome", "timestamp": "yesterday"},
            "timestamp 'yesterday' is not epoch seconds or ISO 8601",
            id="bad-ts",
        ),
        pytest.param(
            {**BASE, "event-type": "viewHome", "user-agent": "a\r\nX-Evil: 1"},
            "user-agent holds a control character (U+000D) that a header cannot carry",
            id="header-injection",
        ),
        *[
            pytest.param(
                {**BASE, "event-type": "viewHome", key: f"a{ch}b"},
                f"{key} holds a control character (U+{ord(ch):04X}) that a header cannot carry",
                id=f"{key}-U+{ord(ch):04X}",
            )
            for key in ("user-agent", "referer", "ip")
            for ch in ("\x00", "\t", "\x0b", "\x0c", "\x1f", "\x7f")
        ],
        *[
            pytest.param(
                {**BASE, "event-type": "viewHome", key: "a\ud800b"},
                f"{key} holds a lone surrogate (U+D800) that UTF-8 cannot carry",
                id=f"{key}-surrogate",
            )
            for key in ("user-agent", "referer", "ip")
        ],
        pytest.param(
            {**BASE, "event-type": "viewHome", "retailer-visitor-id": "v\udc00"},
            "parameter retailer-visitor-id holds a lone surrogate (U+DC00) that UTF-8 cannot carry",
            id="value-surrogate",
        ),
        pytest.param(
            {**BASE, "event-type": "viewItem", "item": ["a", "b\udfff"], "price": 1},
            "parameter item holds a lone surrogate (U+DFFF) that UTF-8 cannot carry",
            id="list-surrogate",
        ),
        pytest.param(
            {**BASE, "event-type": "viewHome", "x\ud800": "1"},
            "parameter name 'x\\\\ud800' holds a lone surrogate (U+D800) that UTF-8 cannot carry",
            id="key-surrogate",
        ),
        pytest.param(
            {**BASE, "event-type": "viewHome", "timestamp": "\ud800"},
            "timestamp '\\ud800' is not epoch seconds or ISO 8601",
            id="timestamp-surrogate",
        ),
    ],
)
def test_invalid_events_say_why(obj: dict[str, object], error: str) -> None:
    item = make_event(obj, seq=0, source="s:1")
    assert isinstance(item, Invalid)
    assert item.error == error


def test_an_id_with_a_lone_surrogate_is_kept_escaped_and_the_event_invalid() -> None:
    item = make_event({**BASE, "event-type": "viewHome", "id": "a\ud800b"}, seq=0, source="s:1")
    assert isinstance(item, Invalid)
    assert item.id == "a\\ud800b"  # printable: a backslash, then ud800
    assert item.error == "id holds a lone surrogate (U+D800) that UTF-8 cannot carry"
    assert invalid(item).to_json()  # the record can be written


def test_printable_characters_and_utf8_stay_valid_in_headers_and_values() -> None:
    ua = "Mozilla/5.0 (é 日本) ~!"
    item = _event(**{"event-type": "viewHome", "user-agent": ua, "keywords": "\x00\x7f"})
    assert isinstance(item, Event)  # a control character is fine in the query string


def test_values_reserved_keys_and_order() -> None:
    item = make_event(
        {
            "zeta-new": "z",
            "item": ["sku1", "sku2", None],
            "event-type": "viewItem",
            "price": RawNumber("12.50"),
            "nolog": True,
            "availability": False,
            "alpha-new": 7,
            "id": 42,
            "timestamp": "2026-01-01T00:00:00Z",
            "user-agent": "UA/1",
            "referer": "https://shop/x",
            "ip": "203.0.113.9",
            "customer-id": None,
            **BASE,
        },
        seq=0,
        source="s:1",
    )
    assert isinstance(item, Event)
    assert item.id == "42"
    assert item.timestamp == 1767225600.0
    assert item.params == (
        ("criteo-partner-id", "12345"),
        ("retailer-visitor-id", "v-1"),
        ("event-type", "viewItem"),
        ("page-id", "viewHome_API_desktop"),
        ("item", "sku1|sku2"),
        ("price", "12.50"),
        ("availability", "0"),
        ("nolog", "1"),
        ("alpha-new", "7"),
        ("zeta-new", "z"),
    )
    assert item.headers == (
        ("User-Agent", "UA/1"),
        ("Referer", "https://shop/x"),
        ("X-Forwarded-For", "203.0.113.9"),
    )


def test_defaults_fill_only_what_is_missing() -> None:
    defaults = EventDefaults(partner_id="999", ip="192.0.2.1")
    obj = {k: v for k, v in BASE.items() if k != "criteo-partner-id"}
    item = make_event({**obj, "event-type": "viewHome"}, seq=0, source="s:1", defaults=defaults)
    assert isinstance(item, Event)
    assert ("criteo-partner-id", "999") in item.params
    assert ("X-Forwarded-For", "192.0.2.1") in item.headers
    own = make_event(
        {**BASE, "event-type": "viewHome", "ip": "198.51.100.1"},
        seq=0,
        source="s:1",
        defaults=defaults,
    )
    assert isinstance(own, Event)
    assert ("criteo-partner-id", "12345") in own.params
    assert own.headers == (("X-Forwarded-For", "198.51.100.1"),)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(1700000000, 1700000000.0, id="int"),
        pytest.param(1700000000.25, 1700000000.25, id="float"),
        pytest.param("1700000000.5", 1700000000.5, id="numeric-string"),
        pytest.param("2023-11-14T22:13:20Z", 1700000000.0, id="iso-z"),
        pytest.param("2023-11-14T23:13:20+01:00", 1700000000.0, id="iso-offset"),
        pytest.param("2023-11-14T22:13:20", 1700000000.0, id="iso-naive-utc"),
    ],
)
def test_timestamps(value: object, expected: float) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(10**400, id="int-past-a-float"),
        pytest.param(-(10**400), id="negative-int-past-a-float"),
        pytest.param("1e400", id="string-past-a-float"),
        pytest.param(float("nan"), id="nan"),
    ],
)
def test_a_timestamp_no_float_holds_is_the_event_s_invalid_record(value: object) -> None:
    """An input line whose timestamp cannot be a number (an integer of 400 digits ended
    the whole run with OverflowError): that line's Invalid, the run goes on."""
    item = make_event({**BASE, "event-type": "viewHome", "timestamp": value}, seq=3, source="s:4")
    assert isinstance(item, Invalid)
    assert item.error == "timestamp is not a finite number"
    assert (item.seq, item.source) == (3, "s:4")
