"""The escaped-body filter of core/secrets (`_unspelled`, `_percents`) never lets a secret
through: whatever it waves on, the full hunt (`_spelled`) would have left alone too."""

from __future__ import annotations

import re
from urllib.parse import quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.secrets import REDACTED, Secrets, _escapes_of

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtb2NrLWNsaWVudCIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJl"
SPACED = "open sesame 42"
PLUS = "abcdefgh+ijklmnop"


def _u(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _pct(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


BEACONS = '"b":"//b.criteo.com/rm?u=https%3A%2F%2Fshop.example%2Fp%3Fa%3D1","r":"{\\"k\\":1}"'


@pytest.mark.parametrize(
    ("secret", "spelled"),
    [
        pytest.param(TOKEN, TOKEN, id="raw-among-quote-escapes"),
        pytest.param(TOKEN, _u(TOKEN), id="u-escaped-among-quote-escapes"),
        pytest.param(TOKEN, _pct(TOKEN), id="percent-encoded-among-beacon-escapes"),
        pytest.param(TOKEN, TOKEN[:30] + _pct(TOKEN[30:40]) + TOKEN[40:], id="partly-percent"),
        pytest.param(TOKEN, TOKEN[:20] + _u(TOKEN[20:25]) + _pct(TOKEN[25:]), id="mixed"),
        pytest.param(SPACED, SPACED.replace(" ", "+"), id="space-as-plus"),
        pytest.param(SPACED, quote(SPACED), id="space-as-percent-20"),
        pytest.param(SPACED, SPACED.replace(" ", "%20", 1).replace(" ", "+"), id="space-mixed"),
        # A `+` of the secret, escaped, as the body's only escape (no beacon escape around
        # to set the decoding off): the probe holds a space for it.
        pytest.param(PLUS, PLUS.replace("+", "%2B"), id="plus-as-percent-2B-alone"),
        pytest.param(PLUS, PLUS.replace("+", "%2b"), id="plus-as-percent-2b-alone"),
    ],
)
def test_a_spelled_secret_in_an_escaped_body_is_redacted(secret: str, spelled: str) -> None:
    beacons = "" if secret == PLUS else BEACONS + ","
    body = ('{"a":"x\\"y",' + beacons + '"echo":"' + spelled + '"}').encode()
    out = Secrets((secret,)).redact_bytes(body)
    assert REDACTED.encode() in out
    echo = orjson.loads(out)["echo"]
    assert echo == REDACTED
    if beacons:
        assert orjson.loads(out)["b"] == orjson.loads(body)["b"]  # the beacons untouched


def test_an_escaped_body_without_a_secret_is_returned_as_it_is() -> None:
    body = ('{"a":"x\\"y",' + BEACONS + "}").encode()
    assert Secrets((TOKEN, SPACED)).redact_bytes(body) is body


PIECES = st.sampled_from(
    ["\\", '\\"', "\\u", "\\u00", "%", "%2", "%2B", "%25", "%4", "+", " ", '"', "a", "4", "1"]
)


@settings(max_examples=300, deadline=None)
@given(
    secret=st.sampled_from([TOKEN, SPACED, PLUS, "s3cr+t/=&é-client-secret", "ab\\cdefgh%ij"]),
    pieces=st.lists(PIECES | st.text(max_size=4), max_size=30),
    cut=st.integers(0, 60),
    how=st.sampled_from(
        [_u, _pct, lambda s: s, lambda s: s.replace(" ", "+"), lambda s: s.replace("+", "%2B")]
    ),
)
def test_the_filter_waves_on_only_what_the_full_hunt_would_leave(
    secret: str, pieces: list[str], cut: int, how: object
) -> None:
    spelled = how(secret)  # type: ignore[operator]
    text = "".join(pieces)
    data = (text[:cut] + spelled + text[cut:]).encode("utf-8", "surrogatepass")
    secrets = Secrets((secret,))
    finder = secrets._finder()
    assert secrets.redact_bytes(data) == finder._spelled(data)


@pytest.mark.parametrize(
    "held",
    [
        pytest.param(
            set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."), id="jwt"
        ),
        pytest.param(set("s3cr+t/=&é-client-secret".encode()), id="client-secret"),
        pytest.param({0x00, 0xFF, 0x7F, 0x80}, id="edges"),
    ],
)
def test_the_percent_filter_matches_exactly_the_escapes_of_the_held_bytes(held: set[int]) -> None:
    found = re.compile(_escapes_of(held).encode()).fullmatch
    for byte in range(256):
        hi, lo = f"{byte:02x}", f"{byte:02X}"
        for digits in {hi, lo, hi[0] + lo[1], lo[0] + hi[1]}:
            assert (found(f"%{digits}".encode()) is not None) is (byte in held), digits
