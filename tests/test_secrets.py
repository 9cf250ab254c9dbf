"""The one redactor (pure): given secrets, issued tokens, short ones left alone, and every
spelling a server or a library may echo a secret in (raw, JSON-escaped, percent-encoded,
base64 of `id:secret`), in any mix, without breaking the JSON around it."""

from __future__ import annotations

import base64
import re
from urllib.parse import quote, quote_plus

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.core.secrets import REDACTED, Secrets, token_problem


@pytest.mark.parametrize(
    ("given", "issued", "text", "expected"),
    [
        pytest.param(("static-token-1",), (), "a static-token-1 b", "a [redacted] b", id="given"),
        pytest.param((), ("issued-token-9",), "x issued-token-9", "x [redacted]", id="issued"),
        pytest.param(("short",), (), "short words stay", "short words stay", id="too-short"),
        pytest.param(
            ("dup-secret-1", "dup-secret-1", None),
            ("dup-secret-1",),
            "dup-secret-1",
            "[redacted]",
            id="named-twice",
        ),
    ],
)
def test_redacts_text_and_bytes_alike(
    given: tuple[str | None, ...], issued: tuple[str, ...], text: str, expected: str
) -> None:
    secrets = Secrets(given, issued=lambda: issued)
    assert secrets.redact(text) == expected
    assert secrets.redact_bytes(text.encode()) == expected.encode()


def test_a_token_issued_mid_run_is_covered_from_then_on() -> None:
    tokens: list[str] = []
    secrets = Secrets(("client-secret-1",), issued=lambda: tokens)
    assert secrets.redact_bytes(b"renewed-token-2") == b"renewed-token-2"
    tokens.append("renewed-token-2")
    assert secrets.redact_bytes(b"renewed-token-2 client-secret-1") == b"[redacted] [redacted]"
    assert secrets.texts() == ("client-secret-1", "renewed-token-2")


def test_min_length_one_hunts_any_secret() -> None:
    assert Secrets(("abc",), min_length=1).redact("x abc y") == "x [redacted] y"
    assert Secrets(("abc",), min_length=1).redact("x %61b%63 y") == "x [redacted] y"


# -- every spelling ---------------------------------------------------------------------------

TOKEN = "tok/en+A=b~9.Z_x"
SECRET = "s3cr+t/=&é x"  # a space, a non-ASCII character, characters percent-encoding takes
CLIENT = "my-client"


def _u(text: str, upper: bool = False) -> str:
    """Every character as \\uXXXX (a surrogate pair beyond the BMP)."""
    units = text.encode("utf-16-be", "surrogatepass")
    codes = [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]
    return "".join(f"\\u{c:04X}" if upper else f"\\u{c:04x}" for c in codes)


def _lower_hex(text: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _basic(client: str, secret: str, encode: object = base64.b64encode) -> str:
    assert callable(encode)
    out: bytes = encode(f"{client}:{secret}".encode())
    return out.decode()


SPELLINGS = [
    pytest.param(TOKEN, id="raw"),
    pytest.param(TOKEN.replace("/", "\\/"), id="json-slash"),
    pytest.param(_u(TOKEN), id="json-u-all"),
    pytest.param(_u(TOKEN, upper=True), id="json-u-upper"),
    pytest.param("tok" + _u("/e") + "n+" + _u("A", True) + "=b~9.Z_x", id="json-u-mixed"),
    pytest.param(TOKEN.replace("/", "\\\\/"), id="json-escaped-twice"),
    pytest.param(_u(TOKEN).replace("\\", "\\\\"), id="json-u-escaped-twice"),
    pytest.param(quote(TOKEN, safe=""), id="percent"),
    pytest.param(_lower_hex(quote(TOKEN, safe="")), id="percent-lower-hex"),
    pytest.param("tok%2fen%2BA=b~9.Z_x", id="percent-mixed"),
    pytest.param("".join(f"%{b:02X}" for b in TOKEN.encode()), id="percent-every-char"),
    pytest.param("tok\\/en%2B" + _u("A") + "%3db~9.Z_x", id="json-and-percent-mixed"),
    pytest.param(SECRET, id="secret-raw"),
    pytest.param(quote_plus(SECRET, safe=""), id="secret-form-encoded"),
    pytest.param(_lower_hex(quote(SECRET, safe="")), id="secret-percent-lower"),
    pytest.param("s3cr%2Bt%2F%3D%26%c3%A9+x", id="secret-percent-mixed-case"),
    pytest.param(orjson.dumps(SECRET).decode()[1:-1], id="secret-json-as-orjson"),
    pytest.param(_u(SECRET), id="secret-json-u"),
    pytest.param("s3cr+t\\/=&\\u00E9\\u0020x", id="secret-json-mixed"),
    pytest.param(_basic(CLIENT, SECRET), id="basic"),
    pytest.param(_basic(CLIENT, SECRET, base64.urlsafe_b64encode), id="basic-urlsafe"),
    pytest.param(quote(_basic(CLIENT, SECRET), safe=""), id="basic-percent"),
    pytest.param(_basic(CLIENT, SECRET).replace("/", "\\/"), id="basic-json-slash"),
]


def _secrets() -> Secrets:
    return Secrets((SECRET,), issued=lambda: (TOKEN,), basic=((CLIENT, SECRET),))


@pytest.mark.parametrize("spelled", SPELLINGS)
@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param("", "", id="alone"),
        pytest.param("Bearer ", " was refused", id="in-text"),
        pytest.param('{"echo":"', '","n":1}', id="in-json"),
        pytest.param("https://x.test/cb?access_token=", "&a=%20b", id="in-url"),
    ],
)
def test_every_spelling_is_redacted(spelled: str, before: str, after: str) -> None:
    secrets = _secrets()
    text = before + spelled + after
    redacted = secrets.redact_bytes(text.encode())
    assert spelled.encode() not in redacted
    assert REDACTED.encode() in redacted
    assert secrets.redact(text) == redacted.decode()
    if before.startswith("{"):  # still JSON (a base64 form may leave its `=` padding)
        parsed = orjson.loads(redacted)
        assert parsed["n"] == 1
        assert parsed["echo"].replace("%3D", "").rstrip("=") == REDACTED


@pytest.mark.parametrize("spelled", SPELLINGS)
def test_a_text_body_written_as_a_json_string_is_redacted_too(spelled: str) -> None:
    """A body that is not JSON lands in a record as a JSON string: its backslashes double."""
    record = orjson.dumps({"response": f"echo: {spelled} <end>"})
    redacted = _secrets().redact_bytes(record)
    assert orjson.loads(redacted)["response"].startswith("echo: [redacted]")
    assert spelled.encode() not in redacted


@pytest.mark.parametrize(
    ("secret", "data", "expected"),
    [
        pytest.param(
            "nSECRET-1", '{"a":"x\\nSECRET-1"}', {"a": "x[redacted]"}, id="starts-inside-escape"
        ),
        pytest.param("u0041SECRET", '{"a":"x\\u0041SECRET"}', {"a": "x[redacted]"}, id="u-before"),
        pytest.param(
            "SECRET-1\\", '{"a":"SECRET-1\\"x"}', {"a": "[redacted]x"}, id="ends-inside-escape"
        ),
        pytest.param(
            "SECRET-1\\", '{"a":"SECRET-1\\\\"}', {"a": "[redacted]"}, id="escaped-backslash"
        ),
        pytest.param('SEC"RET-1', '{"a":"SEC\\"RET-1"}', {"a": "[redacted]"}, id="escaped-quote"),
        pytest.param(
            "SECRET-\U0001f600", '{"a":"SECRET-\\ud83d\\ude00!"}', {"a": "[redacted]!"}, id="pair"
        ),
    ],
)
def test_redacted_json_stays_json(secret: str, data: str, expected: object) -> None:
    assert orjson.loads(Secrets((secret,)).redact_bytes(data.encode())) == expected


def test_nothing_to_find_leaves_the_bytes_as_they_are() -> None:
    secrets = _secrets()
    for data in (b'{"a":"b"}', b'{"u":"\\/x%2Fy+z \\u0041"}', b"plain text"):
        assert secrets.redact_bytes(data) is data


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=8, max_size=24
    ),
    # Mixed (pattern), or one spelling throughout (the substring scans' common case).
    choices=st.lists(st.integers(0, 4), min_size=24, max_size=24)
    | st.integers(0, 4).map(lambda how: [how] * 24),
    prefix=st.text(max_size=8) | st.text('\\u0%+/1aA \x10"', max_size=8),
)
def test_any_secret_in_any_mix_of_spellings(secret: str, choices: list[int], prefix: str) -> None:
    def spell(ch: str, how: int) -> str:
        if how == 1:
            return orjson.dumps(ch).decode()[1:-1] if ch not in "/" else "\\/"
        if how == 2:
            return _u(ch)
        if how == 3:
            return quote(ch, safe="")
        if how == 4:
            return _lower_hex(quote_plus(ch, safe=""))
        return ch

    assume(secret not in REDACTED)  # "[redacte" is still in its own replacement
    # A secret that is one of this test's own keys ("response") is redacted there too.
    assume(all(secret not in scaffold for scaffold in ('{"response":"', ',"echo":"')))
    spelled = "".join(spell(c, how) for c, how in zip(secret, choices, strict=False))
    secrets = Secrets((secret,))
    # As a JSON body's string (embedded as it is)...
    body = b'{"p":' + orjson.dumps(prefix) + b',"echo":"' + spelled.encode() + b'!"}'
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # a raw spelling of a control character is no JSON: the text case covers it
    else:
        _no_secret_in(orjson.loads(secrets.redact_bytes(body))["echo"], secret)
    # ...and as a text body, which a record holds as a JSON string.
    record = orjson.dumps({"response": prefix + spelled + "!"})
    _no_secret_in(orjson.loads(secrets.redact_bytes(record))["response"], secret)


def _no_secret_in(text: str, secret: str) -> None:
    # The match may start in the prefix when the prefix ends like the secret starts.
    assert REDACTED in text
    assert text.endswith("!")
    assert secret not in text


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        pytest.param("abc.DEF-123_~+/=", None, id="b64token"),
        pytest.param("abc def", None, id="space"),
        pytest.param("abc\r\nX: y", "a control character (U+000D)", id="crlf"),
        pytest.param("abc\x00", "a control character (U+0000)", id="nul"),
        pytest.param("abc\x7f", "a control character (U+007F)", id="del"),
        pytest.param("abc\x85", "a control character (U+0085)", id="c1"),
        pytest.param("tökén", "a non-ASCII character (U+00F6)", id="latin-1"),
        pytest.param("tok\u20acn", "a non-ASCII character (U+20AC)", id="not-latin-1"),
        pytest.param("tok\udcffn", "a non-ASCII character (U+DCFF)", id="surrogate"),
    ],
)
def test_token_problem(token: str, problem: str | None) -> None:
    assert token_problem(token) == problem
