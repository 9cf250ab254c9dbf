"""The pure retry policy: reasons, Retry-After, full jitter, budget, adaptive rate."""

from __future__ import annotations

import math
from email.utils import formatdate

import pytest

from engine.core.rates import AdaptiveRate
from engine.core.retry import (
    RetryBudget,
    RetryPolicy,
    RetrySettings,
    full_jitter,
    parse_retry_after,
    retry_reason,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        pytest.param(429, None, "http_429", id="429"),
        pytest.param(502, None, "http_502", id="502"),
        pytest.param(503, None, "http_503", id="503"),
        pytest.param(504, None, "http_504", id="504"),
        pytest.param(500, None, "http_500", id="500"),
        pytest.param(501, None, None, id="501-final"),
        pytest.param(400, None, None, id="400-final"),
        pytest.param(401, None, None, id="401-final"),
        pytest.param(403, None, None, id="403-final"),
        pytest.param(404, None, None, id="404-final"),
        pytest.param(200, None, None, id="200"),
        pytest.param(None, "timeout", "timeout", id="timeout"),
        pytest.param(None, "connect", "connect", id="connect"),
        pytest.param(None, "disconnected", "disconnected", id="dropped"),
        pytest.param(None, "payload", "payload", id="truncated-body"),
        pytest.param(None, "network", "network", id="network"),
        pytest.param(None, "invalid", None, id="invalid-input"),
        pytest.param(200, "too_large", None, id="too-large-final"),
        pytest.param(503, "too_large", None, id="too-large-503-final"),
        pytest.param(None, "protocol", None, id="protocol-final"),
    ],
)
def test_retry_reason(status: int | None, kind: str | None, expected: str | None) -> None:
    assert retry_reason(status, kind) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(" 12 ", 12.0, id="spaces"),
        pytest.param("1.5", 1.5, id="decimal"),
        pytest.param("-3", None, id="negative"),
        pytest.param("nan", None, id="nan"),
        pytest.param("inf", None, id="inf"),
        pytest.param("soon", None, id="garbage"),
        pytest.param(formatdate(NOW + 30, usegmt=True), 30.0, id="http-date"),
        pytest.param(formatdate(NOW - 30, usegmt=True), 0.0, id="http-date-past"),
        pytest.param("Sun, 06 Nov 1994 08:49:37", None, id="date-without-zone"),
        pytest.param("Sun, 99 Nov 1994 08:49:37 GMT", None, id="bad-date"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


_FAR = 1e12  # engine.core.retry.FAR_FUTURE


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("9" * 400, _FAR, id="hundreds-of-digits"),
        pytest.param("9" * 5000, _FAR, id="past-int-str-digits-limit"),
        pytest.param("9" * 13, _FAR, id="thirteen-digits"),
        pytest.param("999999999999", 999999999999.0, id="twelve-digits"),
        pytest.param("0" * 500 + "7", 7.0, id="leading-zeros"),
        pytest.param("0000", 0.0, id="zeros"),
        pytest.param("-" + "9" * 400, None, id="huge-negative"),
        pytest.param("-0", 0.0, id="negative-zero"),
        pytest.param("+5", 5.0, id="plus-sign"),
        pytest.param("1e308", _FAR, id="huge-float"),
        pytest.param("1e400", None, id="float-overflow"),
        pytest.param("1e-400", 0.0, id="float-underflow"),
        pytest.param("-1.5", None, id="negative-float"),
        pytest.param("1_0", None, id="underscore"),
        pytest.param("0x10", None, id="hex"),
        pytest.param("\uff11\uff12", None, id="fullwidth-digits"),
        pytest.param("\u0663", None, id="arabic-digit"),
        pytest.param("\x00", None, id="nul"),
        pytest.param("7 seconds", None, id="words"),
        pytest.param("x" * 10_000, None, id="long-garbage"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0 - NOW, id="date-year-9999"),
        pytest.param("Mon, 01 Jan 0001 00:00:00 GMT", 0.0, id="date-year-1"),
        pytest.param("Mon, 01 Jan 0001 00:00:00 +0100", 0.0, id="date-year-1-east"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 -2359", 253402386739.0 - NOW, id="date-9999-west"),
        pytest.param("Mon, 01 Jan 99999 00:00:00 GMT", None, id="date-year-99999"),
        pytest.param("Mon, 01 Jan " + "9" * 40 + " 00:00:00 GMT", None, id="date-year-overflow"),
        pytest.param("Mon, 01 Jan 2024 00:00:" + "9" * 30 + " GMT", None, id="date-sec-overflow"),
        pytest.param("Mon, 01 Jan 2024 99:99:99 GMT", None, id="date-bad-time"),
        pytest.param("Mon, 01 Jan 2024 00:00:00 +9999", None, id="date-bad-zone"),
    ],
)
def test_retry_after_of_any_form_makes_sense_or_is_ignored(
    value: str, expected: float | None
) -> None:
    got = parse_retry_after(value, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("value", ["9" * 400, "1e308", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_retry_after_far_out_is_final_with_its_reason(value: str) -> None:
    policy = RetryPolicy(RetrySettings(), rand=lambda: 0.5)
    decision = policy.decide(0, value, now=NOW)
    assert decision.final is not None
    assert "--retry-after-cap" in decision.final
    assert "\n" not in decision.final


@pytest.mark.parametrize("value", ["-" + "9" * 400, "x" * 10_000, "1e400", "\x00"])
def test_retry_after_garbage_gets_the_usual_backoff(value: str) -> None:
    policy = RetryPolicy(RetrySettings(backoff_base=0.1), rand=lambda: 0.5)
    assert policy.decide(0, value, now=NOW).wait == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("retry", "rand", "expected"),
    [
        pytest.param(1, 0.5, 0.05, id="first-half"),
        pytest.param(1, 0.0, 0.0, id="first-zero"),
        pytest.param(2, 0.999, 0.1998, id="second"),
        pytest.param(4, 1.0, 0.8, id="fourth"),
        pytest.param(10, 1.0, 10.0, id="capped"),
        pytest.param(10_000, 0.5, 5.0, id="huge-retry-stays-finite"),
    ],
)
def test_full_jitter(retry: int, rand: float, expected: float) -> None:
    assert full_jitter(retry, base=0.1, cap=10.0, rand=rand) == pytest.approx(expected)


def test_budget_reserve_then_ratio() -> None:
    budget = RetryBudget(ratio=0.2, reserve=3.0)
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    for _ in range(10):  # 10 first attempts earn 2 retries
        budget.on_first_attempt()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    assert (budget.spent, budget.refused) == (5, 2)


def test_budget_holds_at_most_its_reserve() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2.0)
    for _ in range(1000):
        budget.on_first_attempt()
    assert budget.tokens == 2.0


def _policy(rands: list[float], **settings: float) -> RetryPolicy:
    it = iter(rands)
    return RetryPolicy(RetrySettings(**settings), rand=lambda: next(it))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("done", "retry_after", "rand", "wait", "final"),
    [
        pytest.param(0, None, 0.5, 0.05, None, id="first-retry"),
        pytest.param(2, None, 1.0, 0.4, None, id="third-retry"),
        pytest.param(3, None, 0.5, 0.0, "gave up after 4 attempts", id="exhausted"),
        pytest.param(0, "2", 0.5, 2.0, None, id="retry-after-floor"),
        pytest.param(2, "0", 1.0, 0.4, None, id="retry-after-below-backoff"),
        pytest.param(0, "31", 0.5, 0.0, "more than --retry-after-cap", id="retry-after-too-long"),
        pytest.param(0, "bogus", 0.5, 0.05, None, id="retry-after-garbage-ignored"),
    ],
)
def test_policy_decide(
    done: int, retry_after: str | None, rand: float, wait: float, final: str | None
) -> None:
    decision = _policy([rand]).decide(done, retry_after, now=NOW)
    assert decision.wait == pytest.approx(wait)
    if final is None:
        assert decision.final is None
    else:
        assert decision.final is not None
        assert final in decision.final


def test_policy_fails_fast_when_budget_is_spent() -> None:
    policy = _policy([0.5] * 10, budget_reserve=2.0, budget_ratio=0.1)
    finals = [policy.decide(0, None, now=NOW).final for _ in range(3)]
    assert finals[:2] == [None, None]
    assert finals[2] is not None
    assert "retry budget exhausted" in finals[2]
    assert policy.budget.refused == 1


def test_policy_zero_retries() -> None:
    decision = _policy([], retries=0).decide(0, None, now=NOW)
    assert decision.final == "gave up after 1 attempts"


def _storm(rate: AdaptiveRate, start: float, calls: int, throttles: int) -> bool:
    """`calls` sends over one second, `throttles` of them answered 429; True on a cut."""
    cut = False
    for i in range(calls):
        now = start + i / calls
        rate.on_send(now)
        if i < throttles:
            cut = rate.on_throttle(now) or cut
    return cut


@pytest.mark.parametrize(
    ("calls", "throttles", "cut"),
    [
        pytest.param(100, 0, False, id="healthy"),
        pytest.param(100, 4, False, id="few-throttles"),
        pytest.param(100, 10, False, id="ten-percent-is-no-storm"),
        pytest.param(100, 60, True, id="storm"),
        pytest.param(8, 8, True, id="small-run-all-throttled"),
    ],
)
def test_adaptive_cuts_only_on_a_storm(calls: int, throttles: int, cut: bool) -> None:
    rate = AdaptiveRate()
    _storm(rate, 100.0, calls, 0)  # a second of history
    assert _storm(rate, 101.0, calls, throttles) is cut
    assert (rate.limit(101.99) is not None) is cut


def test_adaptive_halves_then_recovers() -> None:
    rate = AdaptiveRate(beta=0.5, cooldown=1.0, recovery=2.0)
    _storm(rate, 100.0, 200, 0)
    assert rate.on_throttle(100.999) is False  # one is no storm
    for i in range(100):
        rate.on_throttle(101.0 + i / 1000)
    limit = rate.limit(101.1)
    assert limit is not None
    assert 80 <= limit <= 130  # about half of ~200/s
    assert rate.cuts == 1
    # A second storm within the cooldown does not cut again.
    assert rate.on_throttle(101.5) is False
    later = rate.limit(102.1)  # half a recovery period later: x sqrt(2)
    assert later is not None
    assert later == pytest.approx(limit * math.sqrt(2), rel=0.05)
    assert rate.limit(103.2) is None  # one period: back past the starting rate, lifted
    assert rate.throttled_s == pytest.approx(2.0, abs=0.5)
    assert rate.lowest == pytest.approx(limit, rel=0.1)


def test_adaptive_reserve_spaces_calls() -> None:
    rate = AdaptiveRate(min_rate=10.0, storm_min=1, storm_share=0.0)
    rate.on_send(50.0)
    assert rate.on_throttle(50.0)
    limit = rate.limit(50.0)
    assert limit == pytest.approx(10.0)
    waits = [rate.reserve(50.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_adaptive_unlimited_reserve_is_free() -> None:
    rate = AdaptiveRate()
    assert rate.reserve(1.0) == 0.0
    assert rate.limit(1.0) is None
    assert rate.throttled_seconds(1.0) == 0.0
    assert math.isfinite(rate.measured(1.0))
