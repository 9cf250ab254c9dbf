"""core/jsoncheck.is_json says what orjson.loads says, with simdjson or without it;
embed_body gives the same record either way."""

from __future__ import annotations

import random
import re

import orjson
import pytest

from engine.core import jsoncheck
from engine.core.records import embed_body


def _orjson_takes(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


CASES = [
    pytest.param(b'{"a":[1,2.5e3,-0,true,false,null,"x\\u00e9"]}', id="object"),
    pytest.param(b"123456789012345678901234567890", id="integer-beyond-64-bits"),
    pytest.param(b"18446744073709551616", id="u64-max-plus-one"),
    pytest.param(b"-9223372036854775809", id="i64-min-minus-one"),
    pytest.param(b"1e400", id="infinite-float"),
    pytest.param(b"[" * 1024 + b"]" * 1024, id="arrays-1024-deep"),
    pytest.param(b"[" * 1025 + b"]" * 1025, id="arrays-1025-deep"),
    pytest.param(b'{"a":' * 1024 + b"1" + b"}" * 1024, id="objects-1024-deep"),
    pytest.param(b'"\\ud800"', id="lone-surrogate-escape"),
    pytest.param(b'"\\ud83d\\ude00"', id="surrogate-pair"),
    pytest.param(b'"\xed\xa0\x80"', id="surrogate-in-utf8"),
    pytest.param(b'"\xff"', id="invalid-utf8"),
    pytest.param(b"\xef\xbb\xbf{}", id="byte-order-mark"),
    pytest.param(b"{} x", id="trailing-garbage"),
    pytest.param(b"{}\x00", id="trailing-nul"),
    pytest.param(b" {} \t\n", id="whitespace-around"),
    pytest.param(b'"\x01"', id="control-in-string"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b"01", id="leading-zero"),
    pytest.param(b"   ", id="whitespace-only"),
    pytest.param(b'{"a":1,"a":2}', id="duplicate-key"),
]


@pytest.mark.parametrize("data", CASES)
def test_is_json_agrees_with_orjson(data: bytes) -> None:
    assert jsoncheck.is_json(data) is _orjson_takes(data)


@pytest.mark.parametrize("data", CASES)
def test_embed_body_is_the_same_without_simdjson(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_simd = orjson.dumps({"r": embed_body(data)})
    monkeypatch.setattr(jsoncheck, "_parse", None)
    assert orjson.dumps({"r": embed_body(data)}) == with_simd


def test_a_parser_held_by_a_live_result_lets_orjson_decide() -> None:
    if not jsoncheck.simd_available():
        pytest.skip("pysimdjson is not installed")
    held = jsoncheck._parse(b'{"a":1}')  # a live proxy: the next parse raises
    assert jsoncheck.is_json(b'{"b":2}') is True
    assert jsoncheck.is_json(b'{"b":') is False
    del held


def test_bodies_over_the_simd_limit_are_checked_too() -> None:
    big = b'{"a":"' + b"x" * jsoncheck.SIMD_MAX_BYTES + b'"}'
    assert jsoncheck.is_json(big) is True
    assert jsoncheck.is_json(big[:-1]) is False


def test_mutated_answers_agree_with_orjson() -> None:
    """Random edits of JSON texts (bytes JSON holds, escapes, big numbers): whatever
    simdjson takes, orjson takes too."""
    seeds = [
        b'{"a":[1,2.5e3,-0,true,false,null,"x\\u00e9\\n"],"b":{"c":"\\ud83d\\ude00"}}',
        b'[1,{"k":"v"}]',
        b'"str\\"q"',
        b"12.5e-3",
    ]
    alphabet = b'{}[]",:\\ u0123456789abcdefeEtrfnl.-+\x00\x01\x7f\xc3\xa9\xed\xa0\x80\xff\t'
    pieces = [b"\\u", b"\\ud800", b"1e999", b"99999999999999999999999", b"\\", b'""']
    rng = random.Random(18)
    for _ in range(20000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            roll = rng.random()
            if roll < 0.4 and data:
                del data[min(at, len(data) - 1)]
            elif roll < 0.8:
                data[at:at] = bytes([rng.choice(alphabet)])
            else:
                data[at:at] = rng.choice(pieces)
        body = bytes(data)
        assert jsoncheck.is_json(body) is _orjson_takes(body), body
        expected = orjson.dumps({"r": _embedded_before(body)})
        assert orjson.dumps({"r": embed_body(body)}) == expected, body


def _embedded_before(body: bytes) -> object:
    """embed_body as it was before simdjson (orjson.loads deciding alone): the reference."""
    if not body:
        return None
    if not re.match(rb'[ \t\r\n]*[{\["\-0-9tfn]', body):
        return body.decode("utf-8", "replace")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    del parsed
    # Line breaks, whitespace between a JSON text's tokens, written as spaces: the text
    # as the server sent it on one line (re-encoding it lost digits: 12.50 as 12.5).
    return orjson.Fragment(body.replace(b"\n", b" ").replace(b"\r", b" "))


EMBEDDED = [
    *CASES,
    pytest.param(b"", id="empty"),
    pytest.param(b'\n\t {"a": 1}\r\n', id="whitespace-and-line-breaks"),
    pytest.param(b'{"a":\r1}', id="carriage-return"),
    pytest.param(b" \xef\xbb\xbf{}", id="bom-after-space"),
    pytest.param(b"<html>not json</html>", id="html"),
    pytest.param(b"true", id="true"),
    pytest.param(b"nope", id="starts-like-null"),
    pytest.param(b'{"a":"\xff"}\n', id="invalid-utf8-with-newline"),
    pytest.param(b"-", id="minus-alone"),
]


@pytest.mark.parametrize("body", EMBEDDED)
def test_embed_body_writes_what_it_wrote_before(body: bytes) -> None:
    assert orjson.dumps({"r": embed_body(body)}) == orjson.dumps({"r": _embedded_before(body)})
