"""The input side's fast paths give what the general code gives (issue 18, input side).

`make_event` takes a per-key-set plan for events with nothing wrong and falls back to the
key-by-key loop when anything may be; the query escapes ASCII values by a table; the
JSONL reader tells floats and blank lines apart by exact types. Each is checked here
against the general code on any input hypothesis makes, hostile values included.
"""

from __future__ import annotations

import gzip
import json
import string
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote_plus

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.core import events, plans
from engine.core.compiled import compilable, compiled
from engine.core.events import Event, EventDefaults, Invalid, RawNumber, make_event
from engine.core.query import _escape, _quote, encode_query
from engine.files.jsonlines import _has_float, parse_json_line
from engine.files.sources import read_items

# Keys: the reserved and known ones, and any text (lone surrogates included).
keys = st.one_of(
    st.sampled_from(
        [
            "id",
            "timestamp",
            "user-agent",
            "referer",
            "ip",
            *events.KNOWN_PARAMS,
        ]
    ),
    st.text(max_size=8),
)
texts = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + " -_|&>%+", max_size=12),
    st.text(max_size=12),  # control characters, non-ASCII, lone surrogates
    st.sampled_from(["", "viewHome", "viewItem", "addToCart", "12345", "a|b", "2024-06-01"]),
)
scalars = st.one_of(
    texts,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(RawNumber, st.sampled_from(["12.50", "1e3", "-0.0"])),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)
event_objects = st.dictionaries(keys, values, max_size=10)
defaults = st.sampled_from(
    [
        events.NO_DEFAULTS,
        EventDefaults(partner_id="7", user_agent="ua/1", ip="10.0.0.1"),
        EventDefaults(partner_id="7"),
    ]
)


def _slow(obj: dict[str, object]) -> object:  # without defaults
    try:
        params, headers, timestamp = events._fields(obj)
    except events._BadValue as exc:
        return str(exc)
    return events._ordered(params), headers, timestamp


def _general(obj: dict[str, object], event_defaults: EventDefaults) -> Event | Invalid:
    """What make_event's general loop makes of an event (no id: make_event checks it first)."""
    try:
        params, headers, timestamp = events._fields(obj)
    except events._BadValue as exc:
        return Invalid(3, "in.jsonl:4", None, str(exc))
    if "criteo-partner-id" not in params and event_defaults.partner_id is not None:
        params["criteo-partner-id"] = event_defaults.partner_id
    events._add_defaults(headers, event_defaults)
    error = events.validate(params)
    if error is not None:
        return Invalid(3, "in.jsonl:4", None, error)
    return Event(3, "in.jsonl:4", None, timestamp, events._ordered(params), tuple(headers))


@pytest.mark.slow
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(event_objects, defaults)
@example({"a": "\ud800"}, events.NO_DEFAULTS)
@example({"user-agent": "x\ty"}, events.NO_DEFAULTS)
@example({"user-agent": "\x85"}, events.NO_DEFAULTS)
@example({"user-agent": ""}, events.NO_DEFAULTS)
@example({"timestamp": "soon", "item": {"a": 1}}, events.NO_DEFAULTS)
@example({"\udc80": "x"}, events.NO_DEFAULTS)
@example({"criteo-partner-id": None, "item": ["a", "", "b"]}, EventDefaults(partner_id="7"))
def test_the_planned_event_is_the_general_loops_or_steps_aside(
    obj: dict[str, object], event_defaults: EventDefaults
) -> None:
    base = {
        "criteo-partner-id": 12345,
        "retailer-visitor-id": "rv",
        "event-type": "addToCart",
        "page-id": "p",
        "item": ["a", "b"],
    }
    for candidate in (obj, {**base, **obj}, {**obj, **base}):
        planned = events._planned(candidate, 3, "in.jsonl:4", None, event_defaults)
        if planned is not None:  # else the general loop decides (make_event then uses it)
            assert planned == _general(candidate, event_defaults)


@pytest.mark.slow
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(event_objects, defaults)
@example(
    {"ip": "10.0.0.1", "item": ["a", "b"], "event-type": "addToCart", "page-uid": "u"},
    events.NO_DEFAULTS,
)
@example({"referer": "x\ty", "user-agent": "ua"}, events.NO_DEFAULTS)
@example({"referer": "\udc80", "ip": "x\x7fy"}, events.NO_DEFAULTS)
@example({"referer": "é", "ip": "1"}, events.NO_DEFAULTS)
@example({"ip": "10.0.0.1"}, EventDefaults(ip="10.0.0.2"))
@example({"timestamp": float("nan"), "user-agent": "\x85"}, events.NO_DEFAULTS)
@example({"criteo-partner-id": "12a", "keywords": "a b&c"}, events.NO_DEFAULTS)
@example({"keywords": "a b|c", "item": ["x y", "z"], "key word": "v"}, events.NO_DEFAULTS)
@example({"keywords": "a b|c", "category": "1>2"}, events.NO_DEFAULTS)
def test_a_compiled_plan_makes_what_the_plan_makes_or_steps_aside(
    obj: dict[str, object], event_defaults: EventDefaults
) -> None:
    base = {
        "criteo-partner-id": 12345,
        "retailer-visitor-id": "rv",
        "event-type": "viewSearchResult",
        "page-id": "p",
        "keywords": "k",
    }
    for candidate in ({**base, **obj}, {**obj, **base}):
        plan = plans._plan_of(tuple(candidate))
        if plan is None or not compilable(plan.names):
            continue
        function = compiled(plan, plans._text, plans._with_defaults)
        assert function is not None
        made = function(candidate, 3, "in.jsonl:4", "i", event_defaults)
        if made is not None:  # else the plan's data decides (_planned then uses it)
            assert made == plans._by_plan(candidate, plan, 3, "in.jsonl:4", "i", event_defaults)
            assert made.query == encode_query(made.params)
            assert made.query == "&".join(
                f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in made.params
            )


def test_a_common_key_set_is_compiled_and_its_events_stay_the_same() -> None:
    objs = [
        {
            "id": f"e{i}",
            "timestamp": 1.5,
            "criteo-partner-id": 7,
            "retailer-visitor-id": f"v{i}",
            "event-type": "viewSearchResult",
            "page-id": "p",
            "keywords": kw,
            "user-agent": "ua",
        }
        for i, kw in enumerate(["tea & cups", "", "héros", "a\ud800", None, "x"] * 6)
    ]
    expected = []
    for i, obj in enumerate(objs):
        plans._PLANS.clear()  # never compiled
        expected.append(make_event(obj, seq=i, source=f"in:{i}"))
    plans._PLANS.clear()
    items = [make_event(obj, seq=i, source=f"in:{i}") for i, obj in enumerate(objs)]
    plan = plans._PLANS[tuple(objs[0])]
    assert plan is not None
    assert plan.made is not None
    assert items == expected
    kinds = [type(i).__name__ for i in items[-6:]]
    assert kinds == ["Event", "Invalid", "Event", "Invalid", "Invalid", "Event"]
    for item in items:
        if isinstance(item, Event):
            assert item.query in ("", encode_query(item.params))
    assert isinstance(items[-1], Event)
    assert items[-1].query == encode_query(items[-1].params) != ""


@pytest.mark.slow
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(event_objects, defaults)
def test_an_event_is_what_the_general_loop_makes_of_it(
    obj: dict[str, object], event_defaults: EventDefaults
) -> None:
    base = {
        "criteo-partner-id": 12345,
        "retailer-visitor-id": "rv",
        "event-type": "viewHome",
        "page-id": "p",
    }
    for candidate in (obj, {**base, **obj}):
        item = make_event(candidate, seq=3, source="in.jsonl:4", defaults=event_defaults)
        slow = _slow(candidate)
        if isinstance(slow, str):
            assert isinstance(item, Invalid)
            if not item.error.startswith("id holds"):
                assert item.error == slow
        elif isinstance(item, Event):
            params, headers, timestamp = slow  # type: ignore[misc]
            if event_defaults is events.NO_DEFAULTS:
                assert (item.params, item.headers) == (params, tuple(headers))
            assert item.params == events._ordered(dict(item.params))
            assert item.timestamp == timestamp
            assert item.headers[: len(headers)] == tuple(headers)


@given(st.text(max_size=30))
@example("tea set & cups")
@example("sku-1|sku-2 x")
@example("a+b|c")
@example("12>345 x|y")
@example("98>367")
@example("\x00\x7f ~")
def test_values_are_escaped_as_quote_plus_escapes_them(value: str) -> None:
    try:
        expected = quote_plus(value, safe="")
    except UnicodeEncodeError:
        return  # a lone surrogate: make_event never lets one through
    assert _escape(value) == expected
    assert _quote(value) == expected
    assert (
        encode_query(((value or "k", value),)) == f"{quote_plus(value or 'k', safe='')}={expected}"
    )


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3)
)


@given(
    st.dictionaries(
        st.sampled_from(["timestamp", "price", "a"]),
        st.one_of(json_scalars, st.lists(json_scalars, max_size=3)),
        max_size=3,
    )
)
def test_a_float_is_found_by_type_as_by_isinstance(obj: dict[str, object]) -> None:
    expected = any(
        (isinstance(v, float) and k != "timestamp")
        or (isinstance(v, list) and any(isinstance(x, float) for x in v))
        for k, v in obj.items()
    )
    assert _has_float(obj) is expected


numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from(["12.50", "1e3", "-0.0", "1.5E+10", "0.10", "3.0", "7"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
json_values = st.one_of(
    numbers,
    st.sampled_from(
        ['"price"', '"12.50"', '"a\\"price\\": 1.5"', "null", "true", '{"price": 2.5}']
    ),
    st.lists(numbers, max_size=2).map(lambda xs: "[" + ",".join(map(str, xs)) + "]"),
)


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(st.sampled_from(["timestamp", "price", "a", "pr\\u0069ce", "é"]), json_values),
        max_size=5,
    ),
    st.sampled_from([":", " : ", ":\t"]),
)
@example([("price", "12.50"), ("price", "12.5")], ":")
@example([("price", "12.5"), ("pr\\u0069ce", "12.50")], ":")
@example([("a", '{"price": 2.5}'), ("price", "2.50")], ":")
def test_a_line_reads_as_the_stdlib_reads_it(pairs: list[tuple[str, str]], colon: str) -> None:
    line = ("{" + ", ".join(f'"{k}"{colon}{v}' for k, v in pairs) + "}").encode()
    obj, error = parse_json_line(line)
    # The reference: the stdlib's reading of a line with a float whose text matters.
    expected = orjson.loads(line)
    if _has_float(expected):
        expected = json.loads(line, parse_float=RawNumber)
    assert error is None
    assert obj is not None
    if "timestamp" in expected:
        stamp, read = expected.pop("timestamp"), obj.pop("timestamp")
        if type(read) is float:  # the timestamp is read as a number: orjson's is kept
            assert float(stamp) == read  # type: ignore[arg-type]
        else:
            assert (read, type(read)) == (stamp, type(stamp))
    assert obj == expected
    assert [type(v) for v in obj.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    "line",
    [
        # `":1,"` is in the line twice, once across "k"'s closing quote and the next
        # key's opening one: the float's text must come from the key's own place.
        b'{"k":1,":1,":2.50}',
        b'{"k":"x",":":2.50}',
        b'{"a":"price","price":2.50}',  # the key also a value: the stdlib decides
        b'{"price":2.50,"b":"price"}',
    ],
)
def test_a_float_keeps_its_own_text_whatever_the_keys_spell(line: bytes) -> None:
    obj, error = parse_json_line(line)
    assert error is None
    assert obj == json.loads(line, parse_float=RawNumber)


def test_a_key_set_too_large_to_compile_keeps_the_plans_data_path() -> None:
    extra = {f"k{i}": i for i in range(200)}  # past compiled.MAX_KEYS parameter keys
    base = {"criteo-partner-id": "1", "retailer-visitor-id": "v", "event-type": "viewHome"}
    objs = [{**base, "page-id": f"p{i}", **extra} for i in range(plans.COMPILE_AFTER + 4)]
    plans._PLANS.clear()
    items = [make_event(obj, seq=i, source=f"in:{i}") for i, obj in enumerate(objs)]
    plan = plans._PLANS[tuple(objs[0])]
    assert plan is not None
    assert plan.made is None  # never compiled, never tried again
    assert all(isinstance(item, Event) for item in items)
    assert [item.params[3] for item in items if isinstance(item, Event)] == [
        ("page-id", f"p{i}") for i in range(len(objs))
    ]


def test_floats_keep_their_text_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    lines = [
        b'{"id":"a","timestamp":1717243200.50,"price":12.50,"item":["s",1.0]}',
        b" \t\x0b\x0c",
        b"",
        b"\x1c",  # not blank: answered as malformed JSON
        b'{"id":"b","timestamp":1717243200.5,"price":12.5}',
    ]
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    obj, _ = parse_json_line(lines[0])
    assert obj == json.loads(lines[0], parse_float=RawNumber)
    assert obj is not None
    assert obj["price"] == "12.50"
    assert obj["item"] == ["s", "1.0"]
    items = list(read_items([str(path)]))
    assert [(i.seq, i.source) for i in items] == [
        (0, f"{path}:1"),
        (1, f"{path}:4"),
        (2, f"{path}:5"),
    ]
    assert isinstance(items[1], Invalid)
    assert items[1].error.startswith("malformed JSON")


@pytest.mark.slow
def test_the_parse_benchmark_runs_and_compares() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/parse.py",
            "--events",
            "300",
            "--rounds",
            "1",
            "--compare",
            "HEAD",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| items |" in done.stdout
    assert "| child |" in done.stdout
    assert "faster than HEAD" in done.stdout
