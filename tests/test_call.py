"""The call flow of one event (core/call.py), driven by scripted answers: no server, no
clock, no event loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import formatdate

import pytest

from engine.core.call import (
    AUTHORIZE,
    PERMIT,
    Authorize,
    Backoff,
    CallFlow,
    Effect,
    Permit,
    Renew,
    Send,
    SlowDown,
)
from engine.core.events import Event
from engine.core.rates import AdaptiveRate
from engine.core.records import Response, Result
from engine.core.retry import RetryPolicy, RetrySettings
from engine.core.secrets import Secrets

NOW = 1_800_000_000.0  # the wall clock, for Retry-After dates
EVENT = Event(7, "in.jsonl", "ev-7", None, (("placement", "home"),), ())
OK_BODY = b'{"ok":true}'


def ok() -> Response:
    return Response(200, OK_BODY, NOW, 1.0)


def http(status: int, retry_after: str | None = None) -> Response:
    return Response(status, b"", NOW, 1.0, retry_after=retry_after)


def failed(kind: str, message: str = "cannot connect") -> Response:
    return Response(None, b"", NOW, 1.0, error=message, error_kind=kind)


@dataclass
class Script:
    """The answers a driver would give, in order; permits, renewals and sleeps default
    to yes once their list runs out."""

    responses: list[Response]
    renewals: list[bool] = field(default_factory=list)
    permits: list[bool] = field(default_factory=list)
    sleeps: list[bool] = field(default_factory=list)
    header: str = "Bearer a"

    def answer(self, effect: Effect) -> object:
        match effect:
            case Permit():
                return self.permits.pop(0) if self.permits else True
            case Authorize():
                return self.header
            case Send():
                return self.responses.pop(0)
            case Renew():
                renewed = self.renewals.pop(0)
                if renewed:
                    self.header = "Bearer b"
                return renewed
            case Backoff() | SlowDown():
                return self.sleeps.pop(0) if self.sleeps else True


def drive(flow: CallFlow, script: Script) -> tuple[list[Effect], Result | None]:
    """Every effect the flow asked for, and what it returned."""
    generator = flow.start(EVENT)
    effects: list[Effect] = []
    try:
        effect = next(generator)
        while True:
            effects.append(effect)
            effect = generator.send(script.answer(effect))
    except StopIteration as done:
        return effects, done.value


def words(effects: list[Effect]) -> str:
    names = {Permit: "permit", Authorize: "authorize", Send: "send", Renew: "renew"}
    out = []
    for effect in effects:
        match effect:
            case Backoff(seconds=s):
                out.append(f"backoff {s:g}")
            case SlowDown(seconds=s):
                out.append(f"slow-down {s:g}")
            case _:
                out.append(names[type(effect)])
    return " ".join(out)


def make_policy(settings: RetrySettings | None = None) -> RetryPolicy:
    # rand 0.5: the wait before retry n is 0.5 * min(cap, 0.1 * 2**(n-1)): 0.05, 0.1, 0.2
    return RetryPolicy(settings or RetrySettings(), rand=lambda: 0.5)


def make_flow(
    settings: RetrySettings | None = None,
    *,
    policy: RetryPolicy | None = None,
    adaptive: AdaptiveRate | None = None,
    secrets: Secrets | None = None,
) -> CallFlow:
    return CallFlow(
        policy or make_policy(settings),
        adaptive=adaptive,
        secrets=secrets or Secrets(),
        clock=lambda: 100.0,
        wall_clock=lambda: NOW,
    )


ONE = "permit authorize send"
RETRIES_1 = RetrySettings(retries=1)
NO_BUDGET = RetrySettings(budget_ratio=0.0, budget_reserve=0.0)


@dataclass(frozen=True)
class Expected:
    trace: str
    status: int | None
    attempts: int
    retries: tuple[str, ...] = ()
    error: str | None = None


@pytest.mark.parametrize(
    ("settings", "script", "expected"),
    [
        pytest.param(None, Script([ok()]), Expected(ONE, 200, 1), id="200 first time"),
        pytest.param(
            None,
            Script([http(401), ok()], renewals=[True]),
            Expected(f"{ONE} renew {ONE}", 200, 2, ("http_401",)),
            id="401, renewed, 200",
        ),
        pytest.param(
            None,
            Script([http(401)], renewals=[False]),
            Expected(f"{ONE} renew", 401, 1, (), "HTTP 401"),
            id="401, renewal refused: the 401 is the record",
        ),
        pytest.param(
            None,
            Script([http(401), http(401)], renewals=[True]),
            Expected(f"{ONE} renew {ONE}", 401, 2, ("http_401",), "HTTP 401"),
            id="401 twice: renewed once only",
        ),
        pytest.param(
            RETRIES_1,
            Script([http(401), http(500), ok()], renewals=[True]),
            Expected(f"{ONE} renew {ONE} backoff 0.05 {ONE}", 200, 3, ("http_401", "http_500")),
            id="the 401 retry is not one of --retries",
        ),
        pytest.param(
            None,
            Script([http(503), http(503), http(503), ok()]),
            Expected(
                f"{ONE} backoff 0.05 {ONE} backoff 0.1 {ONE} backoff 0.2 {ONE}",
                200,
                4,
                ("http_503",) * 3,
            ),
            id="503 x3 then 200",
        ),
        pytest.param(
            None,
            Script([http(500)] * 4),
            Expected(
                f"{ONE} backoff 0.05 {ONE} backoff 0.1 {ONE} backoff 0.2 {ONE}",
                500,
                4,
                ("http_500",) * 3,
                "HTTP 500; gave up after 4 attempts",
            ),
            id="500 beyond --retries",
        ),
        pytest.param(
            RETRIES_1,
            Script([http(401), http(500), http(500)], renewals=[True]),
            Expected(
                f"{ONE} renew {ONE} backoff 0.05 {ONE}",
                500,
                3,
                ("http_401", "http_500"),
                "HTTP 500; gave up after 2 attempts",
            ),
            id="401 renewed, then 500 beyond --retries 1",
        ),
        pytest.param(
            None,
            Script([http(503, retry_after="60")]),
            Expected(
                ONE,
                503,
                1,
                (),
                "HTTP 503; server asked to retry after 60s, more than --retry-after-cap 30s",
            ),
            id="Retry-After above the cap: final at once",
        ),
        pytest.param(
            None,
            Script([http(429, retry_after="2"), ok()]),
            Expected(f"{ONE} backoff 2 {ONE}", 200, 2, ("http_429",)),
            id="Retry-After is a floor on the wait",
        ),
        pytest.param(
            None,
            Script([http(503, retry_after=formatdate(NOW + 5, usegmt=True)), ok()]),
            Expected(f"{ONE} backoff 5 {ONE}", 200, 2, ("http_503",)),
            id="Retry-After as a date, against the injected wall clock",
        ),
        pytest.param(
            NO_BUDGET,
            Script([http(503)]),
            Expected(
                ONE,
                503,
                1,
                (),
                "HTTP 503; not retried: retry budget exhausted (the server fails too many "
                "calls; retries are limited to 0% of calls)",
            ),
            id="budget exhausted: final",
        ),
        pytest.param(
            None,
            Script([failed("connect"), failed("timeout", "timed out"), ok()]),
            Expected(f"{ONE} backoff 0.05 {ONE} backoff 0.1 {ONE}", 200, 3, ("connect", "timeout")),
            id="connect error and timeout retried",
        ),
        pytest.param(
            RetrySettings(retries=0),
            Script([failed("connect")]),
            Expected(ONE, None, 1, (), "cannot connect; gave up after 1 attempts"),
            id="--retries 0: the first failure is final",
        ),
        pytest.param(
            None, Script([http(400)]), Expected(ONE, 400, 1, (), "HTTP 400"), id="400 final"
        ),
        pytest.param(
            None, Script([http(501)]), Expected(ONE, 501, 1, (), "HTTP 501"), id="501 final"
        ),
    ],
)
def test_flow(settings: RetrySettings | None, script: Script, expected: Expected) -> None:
    effects, result = drive(make_flow(settings), script)
    assert words(effects) == expected.trace
    assert result is not None
    assert (result.status, result.attempts, result.retries, result.error) == (
        expected.status,
        expected.attempts,
        expected.retries,
        expected.error,
    )
    assert script.responses == []  # every scripted answer was asked for


@pytest.mark.parametrize(
    ("script", "trace"),
    [
        pytest.param(Script([], permits=[False]), "permit", id="halt while waiting for a permit"),
        pytest.param(
            Script([http(503)], sleeps=[False]), f"{ONE} backoff 0.05", id="halt during backoff"
        ),
        pytest.param(
            Script([http(503)], permits=[True, False]),
            f"{ONE} backoff 0.05 permit",
            id="halt on the permit of a retry",
        ),
    ],
)
def test_a_halt_leaves_the_event_unanswered(script: Script, trace: str) -> None:
    effects, result = drive(make_flow(), script)
    assert words(effects) == trace
    assert result is None


def test_renewal_is_asked_with_the_header_used_and_the_retry_sends_the_new_one() -> None:
    effects, _ = drive(make_flow(), Script([http(401), ok()], renewals=[True]))
    sent = [e for e in effects if isinstance(e, Send | Renew)]
    assert sent == [Send("Bearer a"), Renew("Bearer a"), Send("Bearer b")]


def test_the_common_path_reuses_its_effects() -> None:
    flow = make_flow()
    first, _ = drive(flow, Script([ok()]))
    second, _ = drive(flow, Script([ok()]))
    assert first[0] is second[0] is PERMIT
    assert first[1] is second[1] is AUTHORIZE
    assert first[2] is second[2]  # the same header: the same Send


@pytest.mark.parametrize(
    ("script", "deposits"),
    [
        pytest.param(Script([ok()]), 1, id="one call"),
        pytest.param(Script([http(401), http(503), ok()], renewals=[True]), 1, id="three attempts"),
        pytest.param(Script([], permits=[False]), 0, id="halted before the first call"),
    ],
)
def test_the_budget_deposit_is_once_per_event(script: Script, deposits: int) -> None:
    policy = make_policy(RetrySettings(budget_ratio=1.0, budget_reserve=10.0))
    policy.budget.tokens = 0.0
    drive(make_flow(policy=policy), script)
    assert policy.budget.tokens == deposits - policy.budget.spent


@pytest.mark.parametrize(
    ("responses", "cuts", "trace"),
    [
        pytest.param(
            [http(429), http(429), ok()],
            1,
            # the cut sets 10/s (half the 20/s measured); the second 429 is in the cooldown
            f"{ONE} backoff 0.05 {ONE} backoff 0.1 slow-down 0.1 {ONE}",
            id="429 cuts the rate, the next call waits",
        ),
        pytest.param([http(503), ok()], 1, f"{ONE} backoff 0.05 {ONE}", id="503 is a throttle"),
        pytest.param([http(500), ok()], 0, f"{ONE} backoff 0.05 {ONE}", id="500 is not"),
        pytest.param(
            [failed("timeout"), ok()], 0, f"{ONE} backoff 0.05 {ONE}", id="a timeout is not"
        ),
    ],
)
def test_throttle_answers_tell_the_adaptive_rate(
    responses: list[Response], cuts: int, trace: str
) -> None:
    adaptive = AdaptiveRate(storm_min=1, storm_share=0.0)
    effects, result = drive(make_flow(adaptive=adaptive), Script(responses))
    assert words(effects) == trace
    assert adaptive.cuts == cuts
    assert result is not None
    assert result.status == 200


def test_a_halt_during_the_adaptive_wait_leaves_the_event_unanswered() -> None:
    adaptive = AdaptiveRate(storm_min=1, storm_share=0.0)
    script = Script([http(429), http(429)], sleeps=[True, True, False])
    effects, result = drive(make_flow(adaptive=adaptive), script)
    assert words(effects) == f"{ONE} backoff 0.05 {ONE} backoff 0.1 slow-down 0.1"
    assert result is None


def test_the_record_is_redacted() -> None:
    secret = "s3cr3t-token-value"
    flow = make_flow(RetrySettings(retries=0), secrets=Secrets((secret,)))
    _, result = drive(flow, Script([failed("connect", f"refused for {secret}")]))
    assert result is not None
    assert result.error == "refused for [redacted]; gave up after 1 attempts"
