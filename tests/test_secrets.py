"""The one redactor (pure): given secrets, issued tokens, short ones left alone."""

from __future__ import annotations

import pytest

from engine.core.secrets import Secrets


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
