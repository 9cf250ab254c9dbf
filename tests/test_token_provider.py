"""OAuthToken against the real mock token endpoint, its timers driven by an injected clock.

The provider's notion of time is the fake clock (tests/fake_clock.py): its windows, its
retry delays and its --token-wait bounds. Only the mock's answers take real time; nothing
here sleeps to make a window or a delay pass.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import anyio
import pytest
from aiohttp import web
from fake_clock import FakeClock, until
from web_app import serving

from engine.core.tokenwindow import Phase, RefreshPolicy, TokenFailure
from engine.errors import AuthError
from engine.mock import MockConfig, MockHandle, running_mock
from engine.net.auth import Lease
from engine.net.oauth import OAuthToken
from engine.net.token_client import TokenClient

SECRET = "mock-secret"
#: Criteo's windows, with quick retries so a test of three failures takes ms, not seconds.
QUICK = RefreshPolicy(retry_initial_max=0.005, retry_cap_max=0.01)
#: How far the fake clock moves per look while a renewer retries (one QUICK delay at most).
STEP = 0.01


@pytest.fixture
async def token_mock() -> AsyncIterator[MockHandle]:
    async with running_mock(MockConfig(token_lifetime=900.0)) as handle:
        yield handle


def client_for(mock: MockHandle, secret: str = SECRET) -> TokenClient:
    return TokenClient(mock.token_url, client_id="mock-client", client_secret=secret, timeout=5)


@pytest.mark.anyio
async def test_windows_on_an_injected_clock(token_mock: MockHandle) -> None:
    clock = FakeClock()
    async with client_for(token_mock) as client:
        tokens = OAuthToken(client, clock=clock, rng=random.Random(1))
        await tokens.start()
        header = tokens.authorization()
        assert header is not None
        assert header.startswith("Bearer ")
        assert tokens.secrets() == (header[7:],)
        window = tokens.window
        assert window.expires_at == pytest.approx(1900.0)  # from when the request was sent
        for now, phase in [
            (1000.0, Phase.FRESH),
            (window.refresh_at - 0.001, Phase.FRESH),
            (window.refresh_at, Phase.ADVISORY),
            (window.mandatory_at - 0.001, Phase.ADVISORY),
        ]:
            clock.set(now)
            assert window.phase(now) is phase
            assert tokens.authorization() == header  # no wait before the mandatory window
            # What a --workers parent or the Ray token actor hands out: the header and
            # how long it may still be sent (until the mandatory window).
            assert tokens.lease() == Lease(header, pytest.approx(window.mandatory_at - now))
        for now in (window.mandatory_at, 1899.999, 1900.0, 5000.0):
            clock.set(now)
            assert tokens.authorization() is None  # the caller must wait
            assert tokens.lease() == Lease(None, 0.0)
    assert token_mock.state.token_requests == 1


@pytest.mark.anyio
async def test_advisory_renewal_in_the_background(token_mock: MockHandle) -> None:
    clock = FakeClock()
    async with client_for(token_mock) as client:
        tokens = OAuthToken(client, clock=clock)
        await tokens.start()
        first = tokens.authorization()
        async with anyio.create_task_group() as tg:
            tg.start_soon(tokens.maintain)
            clock.set(tokens.window.refresh_at - 0.001)
            await anyio.wait_all_tasks_blocked()
            assert token_mock.state.token_requests == 1  # fresh: nothing asked
            clock.set(tokens.window.refresh_at + 0.5)  # the renewer's timer is this clock
            await until(lambda: tokens.stats.renewals == 1)
            second = tokens.authorization()
            assert second is not None
            assert second != first
            assert tokens.window.expires_at == pytest.approx(clock.now() + 900.0)
            tg.cancel_scope.cancel()
    assert token_mock.state.token_requests == 2
    assert tokens.stats.waits == 0
    assert tokens.stats.fetched == 2


@pytest.mark.anyio
async def test_advisory_failures_retry_while_the_token_keeps_serving(
    token_mock: MockHandle,
) -> None:
    clock = FakeClock()
    async with client_for(token_mock) as client:
        tokens = OAuthToken(client, clock=clock, policy=QUICK)
        await tokens.start()
        first = tokens.authorization()
        token_mock.state.config = replace(token_mock.state.config, token_down=True)
        async with anyio.create_task_group() as tg:
            clock.set(tokens.window.refresh_at)
            tg.start_soon(tokens.maintain)
            await until(lambda: token_mock.state.token_failures >= 3, clock=clock, step=STEP)
            assert tokens.authorization() == first  # still serving, nobody waits
            token_mock.state.config = replace(token_mock.state.config, token_down=False)
            await until(lambda: tokens.stats.renewals == 1, clock=clock, step=STEP)
            assert tokens.authorization() not in (None, first)
            tg.cancel_scope.cancel()
    assert tokens.stats.failures >= 3
    assert tokens.stats.waits == 0


@pytest.mark.anyio
async def test_mandatory_window_callers_wait_for_the_one_renewal(token_mock: MockHandle) -> None:
    clock = FakeClock()
    async with client_for(token_mock) as client:
        tokens = OAuthToken(client, clock=clock, policy=QUICK)
        await tokens.start()
        first = tokens.authorization()
        token_mock.state.config = replace(token_mock.state.config, token_down=True)
        got: list[str | None] = []

        async def call() -> None:
            header = tokens.authorization()
            if header is None:
                header = await tokens.wait_authorization()
            got.append(header)

        async with anyio.create_task_group() as tg:
            clock.set(tokens.window.mandatory_at + 0.01)
            tg.start_soon(tokens.maintain)
            for _ in range(50):
                tg.start_soon(call)
            await until(lambda: token_mock.state.token_failures >= 3, clock=clock, step=STEP)
            assert got == []  # everyone is waiting, nobody sent the old token
            token_mock.state.config = replace(token_mock.state.config, token_down=False)
            await until(lambda: len(got) == 50, clock=clock, step=STEP)
            tg.cancel_scope.cancel()
    assert len(set(got)) == 1
    assert got[0] not in (None, first)
    assert tokens.stats.waits == 50
    assert tokens.stats.renewals == 1  # one renewal served them all
    assert token_mock.state.tokens_issued == 2


@pytest.mark.anyio
async def test_token_wait_bounds_are_clock_time(token_mock: MockHandle) -> None:
    """No renewal comes: a 401 and a call in the mandatory window each wait --token-wait
    of the clock's time; then the 401 is final and the call gets AuthError, never the
    token in hand (about to expire)."""
    clock = FakeClock()
    async with client_for(token_mock) as client:
        tokens = OAuthToken(client, clock=clock, policy=QUICK, wait=5.0)
        await tokens.start()
        first = tokens.authorization()
        token_mock.state.config = replace(token_mock.state.config, token_down=True)
        retried: list[bool] = []
        waited: list[str | None] = []

        async def on_401() -> None:
            retried.append(await tokens.refresh_after_401(first))

        async def call() -> None:
            try:
                waited.append(await tokens.wait_authorization())
            except AuthError as exc:
                waited.append(str(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(tokens.maintain)
            tg.start_soon(on_401)
            await until(lambda: token_mock.state.token_failures >= 1)  # the forced renewal
            clock.advance(4.9)
            await anyio.wait_all_tasks_blocked()
            assert retried == []
            clock.advance(0.2)
            await until(lambda: retried == [False])
            clock.set(tokens.window.mandatory_at)
            tg.start_soon(call)
            await until(lambda: tokens.stats.waits == 1)
            clock.advance(4.9)
            await anyio.wait_all_tasks_blocked()
            assert waited == []
            clock.advance(0.2)
            await until(lambda: len(waited) == 1)
            assert tokens.lease().header is None
            tg.cancel_scope.cancel()
    assert waited == [
        f"token endpoint {token_mock.token_url} gave no fresh token within 5s (--token-wait): "
        "HTTP 503 temporarily_unavailable; --resume sends the rest"
    ]
    assert tokens.stats.renewals == 0
    assert tokens.stats.waits == 1


@pytest.mark.anyio
async def test_401_storm_single_flight(token_mock: MockHandle) -> None:
    async with client_for(token_mock) as client:
        tokens = OAuthToken(client, min_401_interval=60.0)
        await tokens.start()
        old = tokens.authorization()
        answers: list[bool] = []

        async def on_401() -> None:
            answers.append(await tokens.refresh_after_401(old))

        async with anyio.create_task_group() as tg:
            tg.start_soon(tokens.maintain)
            async with anyio.create_task_group() as storm:
                for _ in range(500):
                    storm.start_soon(on_401)
            new = tokens.authorization()
            # A 401 that arrives late, for the old token: retry at once, no new request.
            assert await tokens.refresh_after_401(old) is True
            # The new token refused too, within the interval: no token per event.
            assert await tokens.refresh_after_401(new) is False
            tg.cancel_scope.cancel()
    assert answers == [True] * 500
    assert new not in (None, old)
    assert token_mock.state.token_requests == 2
    assert tokens.stats.after_401 == 1
    assert tokens.stats.renewals == 1


@pytest.mark.anyio
async def test_gives_up_when_the_token_expired_and_credentials_are_refused(
    token_mock: MockHandle,
) -> None:
    clock = FakeClock()
    async with client_for(token_mock) as client:
        tokens = OAuthToken(client, clock=clock)
        await tokens.start()
        token_mock.state.config = replace(token_mock.state.config, clients=())
        clock.set(tokens.window.expires_at + 1)
        with pytest.raises(AuthError) as info:
            await tokens.maintain()
        # Calls are not left waiting, nor sent with the dead token: they get the reason.
        assert tokens.authorization() is None
        with pytest.raises(AuthError) as waited:
            await tokens.wait_authorization()
        assert str(waited.value) == str(info.value)
        assert tokens.lease().failed == str(info.value)
    message = str(info.value)
    assert token_mock.token_url in message
    assert "invalid_client" in message
    assert SECRET not in message


@pytest.mark.anyio
async def test_start_refused_is_fast_and_names_the_url(token_mock: MockHandle) -> None:
    clock = FakeClock()
    async with client_for(token_mock, secret="not-the-secret-4711") as client:
        tokens = OAuthToken(client, wait=30.0, clock=clock)
        # Refused credentials are not retried: no wait on the run's clock (a retry would
        # sleep on it, and it never moves here), one request.
        with anyio.fail_after(5), pytest.raises(AuthError) as info:
            await tokens.start()
        assert clock.now() == 1000.0
    message = str(info.value)
    assert message == (
        f"token endpoint {token_mock.token_url} refused the client credentials: "
        "HTTP 401 invalid_client (Client authentication failed)"
    )
    assert token_mock.state.token_requests == 1
    assert tokens.authorization() is None


@pytest.mark.anyio
async def test_the_token_url_s_password_and_query_values_are_never_shown(
    token_mock: MockHandle,
) -> None:
    """The token URL in a message is shown as `config --show` shows it."""
    base = token_mock.token_url.replace("http://", "http://ops:pa55word@")
    url = base + "?tenant=acme-9f3k&region=eu"
    async with TokenClient(url, client_id="c", client_secret="not-the-secret", timeout=5) as client:
        with anyio.fail_after(5), pytest.raises(AuthError) as info:
            await OAuthToken(client, wait=30.0, clock=FakeClock()).start()
    message = str(info.value)
    assert "pa55word" not in message
    assert "acme-9f3k" not in message
    shown = token_mock.token_url.replace("http://", "http://ops:[redacted]@")
    assert message.startswith(f"token endpoint {shown}?tenant=[redacted]&region=[redacted] ")


@pytest.mark.anyio
async def test_start_with_endpoint_down_gives_up_after_the_wait() -> None:
    async with running_mock(MockConfig(token_down=True)) as mock:
        async with client_for(mock) as client:
            tokens = OAuthToken(client, wait=0.5)
            start = time.monotonic()
            with pytest.raises(AuthError) as info:
                await tokens.start()
            elapsed = time.monotonic() - start
    assert elapsed < 3  # bounded (the wait is 0.5 s)
    assert mock.state.token_requests >= 3  # retried with backoff meanwhile
    assert str(info.value) == (
        f"token endpoint {mock.token_url} gave no token within 0.5s (--token-wait): "
        "HTTP 503 temporarily_unavailable"
    )


@pytest.mark.anyio
async def test_start_rides_out_a_short_outage() -> None:
    async with running_mock(MockConfig(token_down=True)) as mock:
        async with client_for(mock) as client:
            tokens = OAuthToken(client, wait=10.0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(tokens.start)
                await until(lambda: mock.state.token_failures >= 2)
                mock.state.config = replace(mock.state.config, token_down=False)
    assert tokens.authorization() is not None
    assert tokens.stats.failures == mock.state.token_failures


@pytest.mark.anyio
async def test_unreachable_endpoint_is_unavailable_not_refused() -> None:
    async with running_mock() as mock:
        url = mock.token_url
    # The mock is gone: nothing listens on that port any more.
    async with TokenClient(url, client_id="c", client_secret=SECRET, timeout=2) as client:
        tokens = OAuthToken(client, wait=0.3)
        with pytest.raises(AuthError) as info:
            await tokens.start()
    assert "gave no token within 0.3s" in str(info.value)
    assert "cannot connect" in str(info.value)


@pytest.mark.anyio
async def test_gives_up_at_once_when_a_401_renewal_is_refused(token_mock: MockHandle) -> None:
    # The delivery host refuses the token and the token endpoint the credentials:
    # nothing can work any more, so no waiting for the token to expire.
    async with client_for(token_mock) as client:
        tokens = OAuthToken(client)
        await tokens.start()
        old = tokens.authorization()
        token_mock.state.config = replace(token_mock.state.config, clients=())
        errors: list[AuthError] = []

        async def keep() -> None:
            try:
                await tokens.maintain()
            except AuthError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep)
            retry = await tokens.refresh_after_401(old)
    assert retry is False
    (error,) = errors
    message = str(error)
    assert "could not renew the token and the delivery host refused it (HTTP 401)" in message
    assert SECRET not in message
    assert token_mock.state.token_requests == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "text"),
    [
        pytest.param(401, '{"error":"invalid_client","error_description":"token {T} revoked"}',
                     id="oauth-error-quotes-it"),
        pytest.param(500, "Bearer {T}", id="plain-text-quotes-it"),
        pytest.param(503, '{"message":"{E} is not valid"}', id="json-escaped"),
    ],
)  # fmt: skip
async def test_a_token_the_endpoint_granted_never_reaches_its_messages(
    status: int, text: str
) -> None:
    """The endpoint grants a token, then refuses a renewal in words that quote it (raw,
    or JSON-escaped): the failure message says [redacted], never the token."""
    from aiohttp import web

    token = "tokABCDEFGH123/+x"
    answers = iter([web.json_response({"access_token": token, "expires_in": 300})])

    async def endpoint(request: web.Request) -> web.Response:
        first = next(answers, None)
        if first is not None:
            return first
        escaped = "".join(f"\\u{ord(c):04x}" for c in token)
        return web.Response(status=status, text=text.replace("{T}", token).replace("{E}", escaped))

    app = web.Application()
    app.router.add_post("/oauth2/token", endpoint)
    async with serving(app) as base:
        url = f"{base}/oauth2/token"
        async with TokenClient(url, client_id="c", client_secret=SECRET, timeout=5) as client:
            granted = await client.fetch()
            failure = await client.fetch()
    assert getattr(granted, "access_token", None) == token
    assert isinstance(failure, TokenFailure)
    assert f"HTTP {status}" in failure.message
    assert "[redacted]" in failure.message
    assert "ABCDEFGH" not in failure.message
    assert "u0041" not in failure.message.lower()


def token_endpoint(
    clock: FakeClock, renewals: Callable[[], web.Response], asked: list[float]
) -> web.Application:
    """A token endpoint that grants one 2 s token, then answers every renewal `renewals()`;
    `asked` gets the fake clock's time of each request."""

    async def token(request: web.Request) -> web.Response:
        asked.append(clock.now())
        if len(asked) == 1:
            return web.json_response({"access_token": "tok-first-0123456789", "expires_in": 2})
        return renewals()

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    return app


async def renew_until_given_up(clock: FakeClock, app: web.Application, wait: float) -> str:
    """Start, then renew (the fake clock moving) until the renewer gives up: its message."""
    async with serving(app) as base:
        client = TokenClient(f"{base}/oauth2/token", client_id="c", client_secret=SECRET)
        async with client:
            tokens = OAuthToken(client, clock=clock, wait=wait, rng=random.Random(7))
            await tokens.start()
            errors: list[AuthError] = []

            async def keep() -> None:
                try:
                    await tokens.maintain()
                except AuthError as exc:
                    errors.append(exc)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(keep)
                    while not errors:  # the renewer's delays pass; the endpoint answers
                        await anyio.sleep(0.002)
                        clock.advance(0.02)
    assert tokens.stats.fetched == 1
    return str(errors[0])


@pytest.mark.anyio
async def test_renewals_honour_retry_after() -> None:
    # Every renewal rate-limited (429, Retry-After: 1) with 2 s tokens and --token-wait 3:
    # one request a second until the wait is over, not one every 16-31 ms (~120).
    clock, asked = FakeClock(), []

    def slow_down() -> web.Response:
        return web.json_response({"error": "slow_down"}, status=429, headers={"Retry-After": "1"})

    message = await renew_until_given_up(clock, token_endpoint(clock, slow_down, asked), 3.0)
    assert "could not renew the token and it expired: HTTP 429 slow_down" in message
    assert message.endswith("; --resume sends the rest")
    renewals = asked[1:]
    assert 3 <= len(renewals) <= 5
    gaps = [b - a for a, b in itertools.pairwise(renewals)]
    assert all(gap >= 1.0 for gap in gaps[:-1]), gaps
    # The last one, cut short by the end of the wait: the renewer's last try.
    assert renewals[-1] - renewals[0] >= 3.0, renewals


@pytest.mark.anyio
async def test_refused_credentials_mid_run_are_not_hammered() -> None:
    clock, asked = FakeClock(), []

    def refused() -> web.Response:
        return web.json_response({"error": "invalid_client"}, status=401)

    message = await renew_until_given_up(clock, token_endpoint(clock, refused, asked), 3.0)
    assert "could not renew the token and it expired: HTTP 401 invalid_client" in message
    renewals = asked[1:]
    assert 1 <= len(renewals) <= 3  # seconds apart, until the token expired (was 16)
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(renewals))


@pytest.mark.anyio
async def test_tokens_dead_on_arrival_are_failures_that_say_so() -> None:
    # The endpoint answers 2.5 s (on the provider's clock) after a renewal is asked for,
    # with expires_in 2: each such token expired before it arrived.
    clock, asked = FakeClock(), []

    async def token(request: web.Request) -> web.Response:
        asked.append(clock.now())
        if len(asked) > 1:
            clock.advance(2.5)
        return web.json_response({"access_token": f"tok-{len(asked)}-0123456789", "expires_in": 2})

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    message = await renew_until_given_up(clock, app, 3.0)
    assert "could not renew the token and it expired: a token with expires_in 2s came 2." in (
        message
    )
    assert message.endswith(
        "s after it was asked for: it expired before it arrived; --resume sends the rest"
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "answer"),
    [
        pytest.param("GET", "HTTP 405 Method Not Allowed", id="405"),
        pytest.param("POST", "HTTP 404 Not Found", id="404"),
    ],
)
async def test_a_wrong_token_url_says_so(method: str, answer: str) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="no")

    app = web.Application()
    app.router.add_route(method, "/oauth2/token", page)
    async with serving(app) as base:
        url = f"{base}/oauth2/token" if method == "GET" else f"{base}/oauth2/tokn"
        async with TokenClient(url, client_id="c", client_secret=SECRET) as client:
            tokens = OAuthToken(client, wait=30.0, clock=FakeClock())
            with anyio.fail_after(5), pytest.raises(AuthError) as info:
                await tokens.start()
    assert str(info.value) == (
        f"token endpoint {url} answered {answer}: not a token endpoint (check --token-url)"
    )
    assert tokens.stats.requests == 1  # not retried


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answers", "given"),
    [
        pytest.param(["busy", "token"], True, id="the-try-at-the-end-gets-the-token"),
        pytest.param(["busy", "busy"], False, id="then-gives-up"),
    ],
)
async def test_start_waits_out_a_long_retry_after_up_to_the_token_wait(
    answers: list[str], given: bool
) -> None:
    # 503 with Retry-After: 60 at start, --token-wait 10: the provider waits to the end of
    # the wait and asks once more then, as a renewal does (it gave up at once, saying it
    # had waited 10 s).
    clock, asked = FakeClock(), []

    async def token(request: web.Request) -> web.Response:
        asked.append(clock.now())
        if answers[len(asked) - 1] == "token":
            return web.json_response({"access_token": "tok-0123456789", "expires_in": 900})
        return web.Response(status=503, text="busy", headers={"Retry-After": "60"})

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    errors: list[str] = []
    async with serving(app) as base:
        url = f"{base}/oauth2/token"
        async with TokenClient(url, client_id="c", client_secret=SECRET) as client:
            tokens = OAuthToken(client, wait=10.0, clock=clock, rng=random.Random(7))

            async def start() -> None:
                try:
                    await tokens.start()
                except AuthError as exc:
                    errors.append(str(exc))

            async with anyio.create_task_group() as tg:
                tg.start_soon(start)
                await until(lambda: tokens.stats.failures == 1)
                clock.set(1009.9)
                await anyio.wait_all_tasks_blocked()
                assert (asked, errors) == ([1000.0], [])  # waiting: Retry-After is past the wait
                clock.set(1010.0)
                await until(lambda: tokens.stats.requests == 2)
    assert asked == [1000.0, 1010.0]  # the second try at the end of --token-wait
    assert (tokens.authorization() is not None) is given
    assert errors == (
        []
        if given
        else [f"token endpoint {url} gave no token within 10s (--token-wait): HTTP 503 busy"]
    )
