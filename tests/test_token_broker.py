"""The one single flight: TokenBroker (where the token is) and FollowerToken (where it is not).

Tables of 401 storms against in-process providers; no network, no clock.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import pytest
from fake_clock import FakeClock

from engine.core.stats import TokenStats
from engine.errors import AuthError
from engine.net.auth import (
    FollowerToken,
    Lease,
    SingleFlight,
    StaticToken,
    TokenBroker,
    TokenProvider,
)

pytestmark = pytest.mark.anyio
T = TypeVar("T")


class Renewing:
    """A provider that is NOT single-flight itself: every 401 it hears costs a renewal.

    Renewals wait for `gate`, so that a whole storm of 401s arrives while one is running.
    """

    def __init__(self, header: str | None = "Bearer t0") -> None:
        self.header = header
        self.renewals = 0
        self.gate = anyio.Event()

    def authorization(self) -> str | None:
        return self.header

    async def wait_authorization(self) -> str | None:
        await self.gate.wait()
        return self.header

    def lease(self) -> Lease:
        return lease_of(self.header)

    async def refresh_after_401(self, used: str | None) -> bool:
        self.renewals += 1
        await self.gate.wait()
        self.header = f"Bearer t{self.renewals}"
        return True

    async def maintain(self) -> None:
        return None

    def secrets(self) -> tuple[str, ...]:
        return ()

    def token_stats(self) -> TokenStats | None:
        return None


def lease_of(header: str | None) -> Lease:
    """A test token's lease: a minute to go, or (None) in its mandatory window."""
    return Lease(header, 60.0) if header is not None else Lease(None, 0.0)


class Counted:
    """Counts the 401s that reach a provider."""

    def __init__(self, provider: TokenProvider) -> None:
        self.provider = provider
        self.asked = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.provider, name)

    async def refresh_after_401(self, used: str | None) -> bool:
        self.asked += 1
        return await self.provider.refresh_after_401(used)


async def storm(
    refresh: Callable[[str | None], Awaitable[bool]],
    reports: list[str | None],
    release: Callable[[], None] = lambda: None,
) -> list[bool]:
    """Every report at once; `release` once all of them are waiting."""
    answers: list[bool] = []

    async def report(used: str | None) -> None:
        answers.append(await refresh(used))

    async with anyio.create_task_group() as tg:
        for used in reports:
            tg.start_soon(report, used)
        await anyio.wait_all_tasks_blocked()
        release()
    return answers


@pytest.mark.parametrize(
    ("make", "reports", "answers", "calls"),
    [
        pytest.param(Renewing, ["Bearer t0"] * 50, [True] * 50, 1, id="50-401s-one-renewal"),
        pytest.param(
            lambda: Renewing("Bearer t1"),
            ["Bearer t0"] * 5,
            [True] * 5,
            0,
            id="401s-for-a-replaced-token-ask-nothing",
        ),
        pytest.param(
            Renewing,
            ["Bearer t0"] * 5 + ["Bearer old"] * 5,
            [True] * 10,
            1,
            id="current-and-replaced-one-renewal",
        ),
        # A static token answers False; the answer stands for the run: asked once.
        pytest.param(
            lambda: StaticToken("abc"), ["Bearer abc"] * 5, [False] * 5, 1, id="static-token"
        ),
        pytest.param(lambda: StaticToken(None), [None] * 3, [False] * 3, 1, id="no-token"),
    ],
)
async def test_broker_single_flight(
    make: Callable[[], TokenProvider],
    reports: list[str | None],
    answers: list[bool],
    calls: int,
) -> None:
    provider = Counted(make())
    inner = provider.provider
    broker = TokenBroker(provider)
    release = inner.gate.set if isinstance(inner, Renewing) else lambda: None
    got = await storm(broker.refresh_after_401, reports, release)
    assert sorted(got) == sorted(answers)
    assert provider.asked == calls


async def test_broker_renew_answers_the_new_header() -> None:
    provider = Renewing()
    provider.gate.set()
    broker = TokenBroker(provider)
    assert await broker.renew("Bearer t0") == (True, lease_of("Bearer t1"))
    assert await broker.renew("Bearer t0") == (True, lease_of("Bearer t1"))  # late: no ask
    assert provider.renewals == 1
    assert await broker.current() == lease_of("Bearer t1")


async def test_broker_current_waits_out_a_mandatory_window() -> None:
    provider = Renewing(None)  # None: the token is in its mandatory window
    broker = TokenBroker(provider)
    got: list[Lease] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(got, broker.current()))
        await anyio.wait_all_tasks_blocked()
        assert got == []
        provider.header = "Bearer t9"
        provider.gate.set()
    assert got == [lease_of("Bearer t9")]


async def test_broker_current_says_why_when_no_token_comes() -> None:
    class GivenUp(Renewing):
        async def wait_authorization(self) -> str | None:
            raise AuthError("token endpoint T gave no fresh token within 1s (--token-wait)")

    broker = TokenBroker(GivenUp(None))
    lease = await broker.current()
    assert not lease.usable
    why = "token endpoint T gave no fresh token within 1s (--token-wait)"
    assert lease == Lease(None, 0.0, why)


async def _append(got: list[T], value: Awaitable[T]) -> None:
    got.append(await value)


class Asker:
    """The broker side of a follower: records the questions, answers when released."""

    def __init__(self, answer: tuple[bool, str | None]) -> None:
        self.answer = (answer[0], lease_of(answer[1]))
        self.asked: list[str | None] = []
        self.gate = anyio.Event()

    async def __call__(self, used: str | None) -> tuple[bool, Lease]:
        self.asked.append(used)
        await self.gate.wait()
        return self.answer


@pytest.mark.parametrize(
    ("header", "reports", "answer", "answers", "asked", "after"),
    [
        pytest.param(
            "Bearer a",
            ["Bearer a"] * 50,
            (True, "Bearer b"),
            [True] * 50,
            ["Bearer a"],
            "Bearer b",
            id="50-401s-one-question",
        ),
        pytest.param(
            "Bearer b",
            ["Bearer a"] * 5,
            (True, "Bearer c"),
            [True] * 5,
            [],
            "Bearer b",
            id="newer-token-already-pushed-no-question",
        ),
        pytest.param(
            "Bearer s",
            ["Bearer s"] * 5,
            (False, "Bearer s"),
            [False] * 5,
            ["Bearer s"],
            "Bearer s",
            id="static-token",
        ),
        pytest.param(
            "Bearer a",
            ["Bearer a"] * 3,
            (True, None),
            [True] * 3,
            ["Bearer a"],
            None,
            id="broker-in-its-mandatory-window",
        ),
    ],
)
async def test_follower_single_flight(
    header: str,
    reports: list[str | None],
    answer: tuple[bool, str | None],
    answers: list[bool],
    asked: list[str | None],
    after: str | None,
) -> None:
    ask = Asker(answer)
    tokens = FollowerToken(lease_of(header), ask)
    assert await storm(tokens.refresh_after_401, reports, ask.gate.set) == answers
    assert ask.asked == asked
    assert tokens.authorization() == after
    # The answer stands for that value: the same 401 again asks nothing more.
    assert await storm(tokens.refresh_after_401, reports[:2]) == answers[:2]
    assert ask.asked == asked


async def test_followers_and_broker_one_renewal_for_the_run() -> None:
    """Three processes' worth of followers, twenty 401s each: one renewal, one question each."""
    provider = Renewing()
    broker = TokenBroker(provider)
    asked: list[str | None] = []

    async def ask(used: str | None) -> tuple[bool, Lease]:
        asked.append(used)
        return await broker.renew(used)

    followers = [FollowerToken(lease_of("Bearer t0"), ask) for _ in range(3)]
    answers: list[bool] = []

    async def report(tokens: FollowerToken) -> None:
        answers.append(await tokens.refresh_after_401("Bearer t0"))

    async with anyio.create_task_group() as tg:
        for tokens in followers:
            for _ in range(20):
                tg.start_soon(report, tokens)
        await anyio.wait_all_tasks_blocked()
        provider.gate.set()
    assert answers == [True] * 60
    assert provider.renewals == 1
    assert asked == ["Bearer t0"] * 3
    assert {f.authorization() for f in followers} == {"Bearer t1"}
    assert followers[0].secrets() == ("t0", "t1")  # every token it has seen


async def test_follower_waits_for_a_push_or_fetches() -> None:
    pushed = FollowerToken(lease_of(None), Asker((False, None)))
    got: list[str | None] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(got, pushed.wait_authorization()))
        await anyio.wait_all_tasks_blocked()
        assert got == []
        pushed.set(lease_of(None))  # still in the broker's mandatory window: wait on
        await anyio.wait_all_tasks_blocked()
        assert got == []
        pushed.set(Lease("Bearer p"))
    assert got == ["Bearer p"]

    async def fetch() -> Lease:
        return Lease("Bearer f")

    fetched = FollowerToken(lease_of(None), Asker((False, None)), fetch=fetch)
    assert await fetched.wait_authorization() == "Bearer f"
    assert fetched.authorization() == "Bearer f"
    assert (fetched.token_stats(), await fetched.maintain()) == (None, None)


async def test_single_flight_survives_a_cancelled_caller() -> None:
    """The caller whose call runs is cancelled: a waiter calls anew, nobody hangs."""
    flights: SingleFlight[str, int] = SingleFlight()
    calls: list[str] = []
    gate = anyio.Event()

    async def call() -> int:
        calls.append("call")
        await gate.wait()
        return len(calls)

    got: list[int] = []
    first = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _cancellable(first, flights.run("k", call)))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(lambda: _append_int(got, flights.run("k", call)))
        await anyio.wait_all_tasks_blocked()
        first.cancel()
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert calls == ["call", "call"]
    assert got == [2]
    assert await flights.run("k", call) == 3  # nothing remembered: the next 401 calls again


async def _cancellable(scope: anyio.CancelScope, value: Awaitable[int]) -> None:
    with scope:
        await value


async def _append_int(got: list[int], value: Awaitable[int]) -> None:
    got.append(await value)


async def test_follower_never_hands_out_a_header_past_its_lease() -> None:
    """A pushed lease lasts its ttl on the follower's clock; then calls wait for a push,
    at most --token-wait, and raise AuthError rather than send the old header."""
    clock = FakeClock()
    tokens = FollowerToken(Lease("Bearer a", 2.0), Asker((False, None)), wait=5.0, clock=clock)
    assert tokens.authorization() == "Bearer a"
    assert tokens.lease() == Lease("Bearer a", 2.0)
    clock.advance(2.0)
    assert tokens.authorization() is None
    assert tokens.lease() == Lease(None, 0.0)
    errors: list[AuthError] = []

    async def call() -> None:
        try:
            await tokens.wait_authorization()
        except AuthError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.9)
        await anyio.wait_all_tasks_blocked()
        assert errors == []
        clock.advance(0.2)
    assert [str(e) for e in errors] == [
        "no usable token came within 5s (--token-wait): the token endpoint did not renew "
        "it in time; --resume sends the rest"
    ]
    assert tokens.authorization() is None


async def test_follower_told_the_provider_gave_up_stops_waiting_at_once() -> None:
    clock = FakeClock()
    tokens = FollowerToken(Lease(None, 0.0), Asker((False, None)), wait=30.0, clock=clock)
    errors: list[str] = []

    async def call() -> None:
        try:
            await tokens.wait_authorization()
        except AuthError as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        tokens.set(Lease(None, 0.0, "token endpoint T could not renew the token"))
    assert errors == ["token endpoint T could not renew the token"]  # no clock moved
    tokens.set(Lease("Bearer late", 60.0))  # a provider that gave up stays so
    assert tokens.authorization() is None
    assert await tokens.refresh_after_401("Bearer a") is False
    with pytest.raises(AuthError):
        await tokens.wait_authorization()


async def test_follower_with_a_static_lease_sends_no_header_without_waiting() -> None:
    tokens = FollowerToken(Lease(None), Asker((False, None)))  # no token at all: no limit
    assert tokens.authorization() is None
    assert await tokens.wait_authorization() is None
    assert TokenBroker(StaticToken("s")).lease() == Lease("Bearer s")


async def test_follower_takes_the_time_a_lease_spent_on_the_way_off_its_ttl() -> None:
    """A lease read 1.5 s ago (a worker that took that long to start, a full pipe) has
    0.5 s left of its 2 s, not 2 s from when it arrived."""
    clock = FakeClock()
    tokens = FollowerToken(
        Lease("Bearer a", 2.0, at=time.time() - 1.5), Asker((False, None)), clock=clock
    )
    assert tokens.authorization() == "Bearer a"
    clock.advance(0.6)
    assert tokens.authorization() is None
    stamped = TokenBroker(Renewing("Bearer b")).lease()
    assert stamped == Lease("Bearer b", 60.0)  # `at` is not compared
    assert stamped.at is not None
    assert abs(stamped.at - time.time()) < 5


class Counting(Renewing):
    """A provider that renews on a clock: it has figures (TokenStats)."""

    def __init__(self) -> None:
        super().__init__("Bearer t0")
        self.stats = TokenStats(fetched=1, waits=2)

    def token_stats(self) -> TokenStats | None:
        return self.stats


async def test_the_calls_that_waited_in_followers_reach_the_broker_figures() -> None:
    """A follower counts its calls that waited for a token (the broker's provider never
    sees them); the broker adds each follower's running total once, however often it
    is reported, and leaves the provider's own figures as they are."""
    follower = FollowerToken(lease_of(None), Asker((False, None)))
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(follower.wait_authorization)
        await anyio.wait_all_tasks_blocked()
        follower.set(lease_of("Bearer t1"))
    assert follower.waits == 3
    assert follower.token_stats() is None  # fetches are counted once, by the broker's side
    provider = Counting()
    broker = TokenBroker(provider)
    broker.followers_waited(0, follower.waits)
    broker.followers_waited(0, follower.waits)  # its live figures, then its last word
    broker.followers_waited(1, 4)
    broker.followers_waited(1, 1)  # a late report is no step back
    stats = broker.token_stats()
    assert stats is not None
    assert (stats.waits, stats.fetched) == (2 + 3 + 4, 1)
    assert provider.stats.waits == 2
    assert TokenBroker(Renewing()).token_stats() is None  # a static token has no figures
