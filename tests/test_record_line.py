"""A record's line (records._line, written field by field) is what orjson writes for the
Result dataclass; core/rounding.rounded is round() to the same float."""

from __future__ import annotations

import math
import random
from dataclasses import fields

import orjson
import pytest

from engine.core.records import Result, _line, jsonl, jsonl_parts
from engine.core.rounding import rounded

RESULTS = [
    pytest.param(
        Result(0, "pv-1", "in.jsonl:1", 200, True, 1, 1.234, 1764331200.123456, None,
               orjson.Fragment(b'{"status":"OK"}')),
        id="answered",
    ),
    pytest.param(
        Result(7, None, "in.csv:9", 503, False, 3, 12.5, 1.0, "HTTP 503: busy", "busy",
               "http_503", 1764331200.5, ("timeout", "http_503")),
        id="failed-with-retries",
    ),
    pytest.param(
        Result(2, "a\ud800b", "in.jsonl:3", None, False, 0, None, None, "bad \ud800", None,
               "invalid"),
        id="lone-surrogates-escaped",
    ),
    pytest.param(
        Result(3, "x", "s", 200, True, 1, 0.0, 0.0, None, {"a": [1, "é", None]}),
        id="parsed-response",
    ),
]  # fmt: skip


@pytest.mark.parametrize("result", RESULTS)
def test_a_line_is_the_dataclass_as_orjson_writes_it(result: Result) -> None:
    assert _line(result) == result.to_json() + b"\n"
    assert jsonl([result, result]) == (result.to_json() + b"\n") * 2
    assert b"".join(jsonl_parts([result])) == result.to_json() + b"\n"


def test_a_line_holds_every_field_in_order() -> None:
    result = Result(*range(len(fields(Result))))  # type: ignore[arg-type]
    assert list(orjson.loads(_line(result))) == [f.name for f in fields(Result)]
    assert list(orjson.loads(_line(result)).values()) == list(range(len(fields(Result))))


def test_rounded_is_round() -> None:
    rng = random.Random(18)
    values = [rng.uniform(0, 5000) for _ in range(20000)]
    values += [1764331200 + rng.random() * 1e6 for _ in range(20000)]
    values += [rng.uniform(-1e6, 1e6) for _ in range(2000)]
    values += [0.0, -0.0, 0.0005, 0.0015, 2.5e-7, 1e300, -1e300, math.inf, -math.inf]
    values += [1764331200.1234565, 2.0**52, -1e-9]
    # Products a quarter and three eighths from an integer, and half-way points, on the
    # grid of quarters of a sent_at (2**50 <= value * 1e6 < 2**51) and finer below it.
    for base in (1764331200.0, 1234.0, 0.5):
        for n in range(4000):
            value = base + n * 1.1e-7
            values += [value, math.nextafter(value, 0.0), math.nextafter(value, math.inf)]
    for digits in (3, 6):
        for value in values:
            assert repr(rounded(value, digits)) == repr(round(value, digits)), (value, digits)
    assert math.isnan(rounded(math.nan, 3))
