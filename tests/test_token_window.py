"""The token window, backoff and answer parsing (pure): tables of rows, no clock, no network."""

from __future__ import annotations

import math

import orjson
import pytest

from engine.core.secrets import Secrets
from engine.core.stats import RunStats, TokenStats, summarize
from engine.core.tokenwindow import (
    NO_WINDOW,
    Phase,
    RefreshPolicy,
    TokenFailure,
    TokenGrant,
    TokenWindow,
    parse_token_answer,
    startup_delay,
)

POLICY = RefreshPolicy()
NO_LIFETIME = TokenFailure("unavailable", "HTTP 200 with no usable expires_in (at least 0.5s)")


@pytest.mark.parametrize(
    ("sent_at", "lifetime", "draw", "refresh_at", "mandatory_at", "expires_at"),
    [
        # Criteo's 15 minutes: renew 225 s (draw 0) to 169 s (draw 1) before expiry,
        # calls wait only in the last 10 s.
        pytest.param(1000.0, 900.0, 0.0, 1675.0, 1890.0, 1900.0, id="900s-earliest"),
        pytest.param(1000.0, 900.0, 1.0, 1731.25, 1890.0, 1900.0, id="900s-latest"),
        pytest.param(1000.0, 900.0, 0.5, 1703.125, 1890.0, 1900.0, id="900s-middle"),
        # A 2 s test token: renew 0.5..0.375 s before, wait in the last 0.25 s (the floor).
        pytest.param(0.0, 2.0, 0.0, 1.5, 1.75, 2.0, id="2s-earliest"),
        pytest.param(0.0, 2.0, 1.0, 1.625, 1.75, 2.0, id="2s-latest"),
        # 1.5 s: the floor would eat the advisory window; half of it at most (0.1875 s).
        pytest.param(0.0, 1.5, 0.0, 1.125, 1.3125, 1.5, id="1.5s-mandatory-half-advisory"),
        # A long lifetime: the mandatory window is capped at 10 s.
        pytest.param(0.0, 3600.0, 0.0, 2700.0, 3590.0, 3600.0, id="1h-mandatory-capped"),
        # A zero lifetime from a broken server: everything at once, never negative.
        pytest.param(5.0, 0.0, 0.5, 5.0, 5.0, 5.0, id="zero-lifetime"),
        pytest.param(5.0, -3.0, 0.5, 5.0, 5.0, 5.0, id="negative-lifetime"),
    ],
)
def test_window_bounds(
    sent_at: float,
    lifetime: float,
    draw: float,
    refresh_at: float,
    mandatory_at: float,
    expires_at: float,
) -> None:
    window = POLICY.window(sent_at=sent_at, lifetime=lifetime, draw=draw)
    assert window.refresh_at == pytest.approx(refresh_at)
    assert window.mandatory_at == pytest.approx(mandatory_at)
    assert window.expires_at == pytest.approx(expires_at)
    assert window.sent_at == sent_at
    assert window.refresh_at <= window.mandatory_at <= window.expires_at


@pytest.mark.parametrize(
    ("now", "phase"),
    [
        pytest.param(0.0, Phase.FRESH, id="at-send"),
        pytest.param(1.499, Phase.FRESH, id="just-before-advisory"),
        pytest.param(1.5, Phase.ADVISORY, id="advisory-starts"),
        pytest.param(1.749, Phase.ADVISORY, id="advisory-ends"),
        pytest.param(1.75, Phase.MANDATORY, id="mandatory-starts"),
        pytest.param(1.999, Phase.MANDATORY, id="mandatory-ends"),
        pytest.param(2.0, Phase.EXPIRED, id="expiry"),
        pytest.param(1e9, Phase.EXPIRED, id="long-after"),
    ],
)
def test_phase_on_an_injected_clock(now: float, phase: Phase) -> None:
    window = POLICY.window(sent_at=0.0, lifetime=2.0, draw=0.0)
    assert window.phase(now) is phase


def test_phase_of_the_empty_window_is_expired() -> None:
    # The provider starts with this window: no token yet means calls must wait.
    empty = TokenWindow(0.0, -math.inf, -math.inf, -math.inf)
    assert empty.phase(0.0) is Phase.EXPIRED
    assert NO_WINDOW == empty


def test_parse_token_answer_redacts_a_short_client_secret() -> None:
    # The client secret is hunted whatever its length (min_length=1), unlike in records.
    body = _json({"error": "invalid_client", "error_description": "secret xy is wrong"})
    failure = parse_token_answer(401, body, secrets=Secrets(("xy",), min_length=1))
    assert failure == TokenFailure(
        "refused", "HTTP 401 invalid_client (secret [redacted] is wrong)"
    )


@pytest.mark.parametrize(
    ("policy", "lifetime", "draw"),
    [
        pytest.param(RefreshPolicy(jitter=0.0), 900.0, 0.9, id="no-jitter"),
        pytest.param(RefreshPolicy(advisory_fraction=0.5), 60.0, 0.3, id="half-lifetime"),
        pytest.param(RefreshPolicy(mandatory_max=1.0), 600.0, 0.7, id="short-mandatory"),
        pytest.param(RefreshPolicy(mandatory_min=2.0), 20.0, 0.2, id="mandatory-floor"),
        pytest.param(RefreshPolicy(mandatory_min=9.0), 20.0, 0.2, id="floor-half-advisory"),
    ],
)
def test_window_follows_policy(policy: RefreshPolicy, lifetime: float, draw: float) -> None:
    w = policy.window(sent_at=0.0, lifetime=lifetime, draw=draw)
    advisory = lifetime * policy.advisory_fraction
    assert w.refresh_at == pytest.approx(lifetime - advisory * (1 - policy.jitter * draw))
    mandatory = min(
        policy.mandatory_max,
        max(policy.mandatory_min, lifetime * policy.mandatory_fraction),
        advisory / 2,
    )
    assert w.mandatory_at == pytest.approx(lifetime - mandatory)


@pytest.mark.parametrize(
    ("lifetime", "attempt", "draw", "expected"),
    [
        # 900 s token: 0.5 s doubling, capped at 8 s; draw 1 -> full, draw 0 -> half.
        pytest.param(900.0, 0, 1.0, 0.5, id="900s-first"),
        pytest.param(900.0, 0, 0.0, 0.25, id="900s-first-low-jitter"),
        pytest.param(900.0, 3, 1.0, 4.0, id="900s-fourth"),
        pytest.param(900.0, 4, 1.0, 8.0, id="900s-cap"),
        pytest.param(900.0, 60, 1.0, 8.0, id="900s-huge-attempt"),
        # 2 s token: 0.125 s between the latest renewal start and the mandatory window
        # -> 15.6 ms doubling, capped at 31 ms: five tries fit.
        pytest.param(2.0, 0, 1.0, 0.015625, id="2s-first"),
        pytest.param(2.0, 2, 1.0, 0.03125, id="2s-cap"),
        pytest.param(2.0, 9, 0.5, 0.0234375, id="2s-cap-jitter"),
        # Degenerate lifetime: still a small positive delay, never zero or negative.
        pytest.param(0.0, 0, 0.0, 0.0025, id="zero-lifetime"),
    ],
)
def test_retry_delay(lifetime: float, attempt: int, draw: float, expected: float) -> None:
    assert POLICY.retry_delay(attempt, lifetime=lifetime, draw=draw) == pytest.approx(expected)


def test_retries_fit_in_the_advisory_window() -> None:
    # Before the mandatory window, a failing endpoint gets several tries.
    for lifetime in (2.0, 60.0, 900.0, 3600.0):
        w = POLICY.window(sent_at=0.0, lifetime=lifetime, draw=1.0)  # latest start
        spent, tries = 0.0, 0
        while w.refresh_at + spent < w.mandatory_at:
            spent += POLICY.retry_delay(tries, lifetime=lifetime, draw=1.0)
            tries += 1
        assert tries >= 5, lifetime


_SLOW_DOWN = TokenFailure("unavailable", "HTTP 429 slow_down", retry_after=1.0)
_DOWN = TokenFailure("unavailable", "HTTP 503 temporarily_unavailable")
_REFUSED = TokenFailure("refused", "HTTP 401 invalid_client")
#: A 2 s token sent at 0: renewal from 1.5-1.625 s, mandatory window at 1.75 s, expiry at 2 s.
_2S = POLICY.window(sent_at=0.0, lifetime=2.0, draw=0.0)
_900S = POLICY.window(sent_at=0.0, lifetime=900.0, draw=0.0)


@pytest.mark.parametrize(
    ("failure", "attempt", "window", "now", "give_up_at", "expected"),
    [
        # The token serves: the lifetime's backoff (0.5 s doubling) for a 900 s token...
        pytest.param(_DOWN, 0, _900S, 700.0, 930.0, 0.5, id="900s-serving"),
        # ... but never closer than 0.1 s for a 2 s token (was 16 ms: a herd).
        pytest.param(_DOWN, 0, _2S, 1.5, 5.0, 0.1, id="2s-serving-least-spacing"),
        # Calls wait (mandatory window) or the token is dead: paced by --token-wait (3 s:
        # 0.1875 s doubling), not by the 2 s lifetime.
        pytest.param(_DOWN, 2, _2S, 1.8, 4.5, 0.75, id="2s-waiting-paced-by-the-wait"),
        pytest.param(_DOWN, 9, _2S, 2.5, 4.5, 2.0, id="2s-dead-bounded-by-the-give-up"),
        # A Retry-After is honoured, up to the renewer's last try.
        pytest.param(_SLOW_DOWN, 0, _2S, 1.5, 4.5, 1.0, id="retry-after"),
        pytest.param(_SLOW_DOWN, 0, _2S, 4.0, 4.5, 0.5, id="retry-after-bounded-by-the-wait"),
        pytest.param(_SLOW_DOWN, 0, _2S, 4.48, 4.5, 0.1, id="never-under-the-least-spacing"),
        # Refused credentials: seconds apart (1 s doubling to 60 s), until the token expires.
        pytest.param(_REFUSED, 0, _900S, 700.0, 900.0, 1.0, id="refused"),
        pytest.param(_REFUSED, 9, _900S, 700.0, 900.0, 60.0, id="refused-cap"),
        pytest.param(_REFUSED, 0, _2S, 1.5, 2.0, 0.5, id="refused-until-expiry"),
    ],
)
def test_renewal_delay(
    failure: TokenFailure,
    attempt: int,
    window: TokenWindow,
    now: float,
    give_up_at: float,
    expected: float,
) -> None:
    delay = POLICY.renewal_delay(
        attempt, failure, window=window, now=now, give_up_at=give_up_at, wait=3.0, draw=1.0
    )
    assert delay == pytest.approx(expected)


_BUSY = TokenFailure("unavailable", "HTTP 503 busy", retry_after=60.0)


@pytest.mark.parametrize(
    ("backoff", "failure", "now", "give_up_at", "expected"),
    [
        pytest.param(0.25, _DOWN, 0.0, 10.0, 0.25, id="the-backoff"),
        pytest.param(0.25, _SLOW_DOWN, 0.0, 10.0, 1.0, id="not-before-retry-after"),
        # A Retry-After past the end of --token-wait: the last try is made at the end (at
        # start and mid-run alike), not given up at once.
        pytest.param(0.25, _BUSY, 0.0, 10.0, 10.0, id="retry-after-cut-to-the-end"),
        pytest.param(0.25, _BUSY, 9.98, 10.0, 0.1, id="never-under-the-least-spacing"),
    ],
)
def test_next_try(
    backoff: float, failure: TokenFailure, now: float, give_up_at: float, expected: float
) -> None:
    delay = POLICY.next_try(backoff, failure, now=now, give_up_at=give_up_at)
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "wait", "draw", "expected"),
    [
        pytest.param(0, 30.0, 1.0, 0.25, id="first"),
        pytest.param(4, 30.0, 1.0, 4.0, id="cap"),
        pytest.param(10, 30.0, 0.0, 2.0, id="cap-low-jitter"),
        pytest.param(0, 0.8, 1.0, 0.05, id="short-wait-scales-down"),
    ],
)
def test_startup_delay(attempt: int, wait: float, draw: float, expected: float) -> None:
    assert startup_delay(attempt, wait=wait, draw=draw) == pytest.approx(expected)


def _json(obj: object) -> bytes:
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(
            200,
            _json({"access_token": "abc", "token_type": "Bearer", "expires_in": 900}),
            TokenGrant("abc", 900.0),
            id="criteo-answer",
        ),
        pytest.param(
            200,
            _json({"access_token": "abc", "token_type": "bearer", "expires_in": "1.5"}),
            TokenGrant("abc", 1.5),
            id="lowercase-type-string-lifetime",
        ),
        pytest.param(
            200, _json({"access_token": "abc"}), TokenGrant("abc", 900.0), id="no-lifetime"
        ),
        pytest.param(
            200,
            _json({"access_token": "abc", "expires_in": 0}),
            NO_LIFETIME,
            id="zero-lifetime",
        ),
        pytest.param(
            200,
            _json({"access_token": "abc", "expires_in": True}),
            NO_LIFETIME,
            id="bool-lifetime",
        ),
        pytest.param(
            200,
            _json({"access_token": "abc", "expires_in": 0.01}),
            NO_LIFETIME,
            id="tiny-lifetime",
        ),
        pytest.param(
            200,
            _json({"access_token": "abc", "expires_in": "soon"}),
            NO_LIFETIME,
            id="text-lifetime",
        ),
        pytest.param(
            200,
            _json({"access_token": "", "expires_in": 900}),
            TokenFailure("unavailable", "HTTP 200 without an access_token"),
            id="empty-token",
        ),
        pytest.param(
            200,
            _json(["access_token"]),
            TokenFailure("unavailable", "HTTP 200 without an access_token"),
            id="not-an-object",
        ),
        pytest.param(
            200,
            b"<html>proxy</html>",
            TokenFailure("unavailable", "HTTP 200 with a body that is not JSON"),
            id="html",
        ),
        pytest.param(
            200,
            _json({"access_token": "abc", "token_type": "mac"}),
            TokenFailure("refused", "token_type 'mac' is not Bearer"),
            id="wrong-type",
        ),
        pytest.param(
            401,
            _json({"error": "invalid_client", "error_description": "Client authentication failed"}),
            TokenFailure("refused", "HTTP 401 invalid_client (Client authentication failed)"),
            id="invalid-client",
        ),
        pytest.param(
            400,
            _json({"error": "unsupported_grant_type"}),
            TokenFailure("refused", "HTTP 400 unsupported_grant_type"),
            id="bad-grant",
        ),
        pytest.param(
            403, b"Forbidden\n", TokenFailure("refused", "HTTP 403 Forbidden"), id="forbidden"
        ),
        # A wrong --token-url says so, not "refused the client credentials", nor
        # aiohttp's "404: Not Found" after the status again.
        pytest.param(
            404,
            b"404: Not Found",
            TokenFailure(
                "wrong_url", "HTTP 404 Not Found: not a token endpoint (check --token-url)"
            ),
            id="wrong-url",
        ),
        pytest.param(
            405,
            b"<html>Method Not Allowed</html>",
            TokenFailure(
                "wrong_url", "HTTP 405 Method Not Allowed: not a token endpoint (check --token-url)"
            ),
            id="wrong-url-get-only",
        ),
        pytest.param(
            500,
            b"500 Internal Server Error",
            TokenFailure("unavailable", "HTTP 500 Internal Server Error"),
            id="status-not-repeated",
        ),
        pytest.param(
            500,
            b"500",
            TokenFailure("unavailable", "HTTP 500 500"),
            id="status-alone-kept",
        ),
        pytest.param(
            503,
            b"5000 requests queued",
            TokenFailure("unavailable", "HTTP 503 5000 requests queued"),
            id="number-not-the-status-kept",
        ),
        pytest.param(
            503,
            _json({"error": "temporarily_unavailable"}),
            TokenFailure("unavailable", "HTTP 503 temporarily_unavailable"),
            id="down",
        ),
        pytest.param(
            429, b"", TokenFailure("unavailable", "HTTP 429 no body"), id="rate-limited-empty"
        ),
        pytest.param(
            502,
            b"bad   gateway\r\n  from   proxy",
            TokenFailure("unavailable", "HTTP 502 bad gateway from proxy"),
            id="whitespace-folded",
        ),
    ],
)
def test_parse_token_answer(status: int, body: bytes, expected: object) -> None:
    assert parse_token_answer(status, body) == expected


def test_parse_token_answer_keeps_the_retry_after() -> None:
    failure = parse_token_answer(429, b'{"error":"slow_down"}', retry_after=1.0)
    assert failure == TokenFailure("unavailable", "HTTP 429 slow_down", 1.0)


def test_parse_token_answer_redacts_an_echoed_secret() -> None:
    body = _json({"error": "invalid_client", "error_description": "bad secret s3cr3t-value"})
    failure = parse_token_answer(401, body, secrets=Secrets(("s3cr3t-value",), min_length=1))
    assert isinstance(failure, TokenFailure)
    assert "s3cr3t-value" not in failure.message
    assert failure.message == "HTTP 401 invalid_client (bad secret [redacted])"


@pytest.mark.parametrize(
    ("token_type", "message"),
    [
        pytest.param("mac", "token_type 'mac' is not Bearer", id="a-word-is-named"),
        pytest.param("s3cr3t-value", "token_type is not Bearer", id="the-client-secret"),
        pytest.param("tok-0123456789", "token_type is not Bearer", id="the-token-it-grants"),
        pytest.param("0123456789", "token_type is not Bearer", id="a-piece-of-the-token"),
        pytest.param("mac tok-0123456789", "token_type is not Bearer", id="more-than-a-word"),
        pytest.param(7, "token_type is not Bearer", id="not-a-string"),
    ],
)
def test_parse_token_answer_names_a_refused_token_type_only_when_it_is_a_word(
    token_type: object, message: str
) -> None:
    """An endpoint may put anything in token_type, the client secret or (a piece of)
    the token it grants included: only one short word that is neither is named."""
    body = _json({"access_token": "tok-0123456789", "expires_in": 300, "token_type": token_type})
    failure = parse_token_answer(200, body, secrets=Secrets(("s3cr3t-value",), min_length=1))
    assert failure == TokenFailure("refused", message)


def test_parse_token_answer_keeps_messages_short() -> None:
    failure = parse_token_answer(500, b"x" * 10_000)
    assert isinstance(failure, TokenFailure)
    assert len(failure.message) <= 300


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        pytest.param(None, None, id="static-token"),
        pytest.param(
            TokenStats(fetched=1, requests=1),
            "tokens: 1 fetched (0 renewals), 0 failed, 0 calls waited",
            id="first-only",
        ),
        pytest.param(
            TokenStats(
                fetched=5,
                renewals=4,
                after_401=1,
                requests=7,
                failures=2,
                waits=3,
                renewal_ms_total=40.0,
                renewal_ms_max=25.0,
            ),
            "tokens: 5 fetched (4 renewals, 1 after 401), 2 failed, "
            "renewal mean 10.0 ms max 25.0 ms, 3 calls waited",
            id="renewals",
        ),
    ],
)
def test_summary_token_fields(tokens: TokenStats | None, expected: str | None) -> None:
    summary = summarize(RunStats(), elapsed_s=1.0, tokens=tokens)
    line = summary.line()
    if expected is None:
        assert not summary.dynamic_tokens
        assert "tokens:" not in line
    else:
        assert summary.dynamic_tokens
        assert line.endswith("; " + expected)
        assert tokens is not None
        assert summary.tokens_fetched == tokens.fetched
        assert summary.token_failures == tokens.failures
        assert summary.token_waits == tokens.waits
