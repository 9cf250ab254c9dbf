"""Token providers: what goes in the Authorization header of a delivery call.

Rules:
- A call reads the current header value without awaiting (`authorization()`). Only two
  things make a call wait: a token in its mandatory window (`wait_authorization`, all
  callers wait on the one renewal in progress) and a 401 (`refresh_after_401`).
- One single flight (`SingleFlight`) for every provider that renews or asks: any number
  of 401s that report the same refused value cause one renewal (or one question to the
  process that holds the token) and share its answer. OAuthToken (engine/net/oauth.py),
  TokenBroker and FollowerToken all use it.
- One token for every process of a run: the process that holds the credentials (the
  --workers parent, the Ray token actor) wraps its provider in a `TokenBroker`; the
  processes that only send (a --workers child, a Ray sender) hold a `FollowerToken`,
  whose header is pushed (`set`) or fetched and whose 401s ask the broker side. A
  follower never sees credentials, only the headers it must send and redact.
- No header goes out past its time. A header crosses processes as a `Lease`: how many
  more seconds it may be sent, and why none will come once the provider gave up. When
  no usable header comes within --token-wait, `wait_authorization` raises AuthError:
  the call is not made (the engine stops the run, and writes no record for it).
- Time for the token timers comes from an injected `Clock` (`MONOTONIC` in a run); a
  test moves its own clock instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Generic, Protocol, TypeVar

import anyio

from engine.config import DEFAULT_TOKEN_WAIT
from engine.core.kept import KeptTokens
from engine.core.stats import TokenStats
from engine.errors import AuthError

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Lease:
    """An Authorization value as it is handed to a process that only sends.

    `ttl`: seconds it may still be sent, counted from when the lease was read (None: no
    limit, a static token). `failed`: the provider gave up (no header will come); why,
    in one line. `at`: when the lease was read (`time.time()`, stamped by the broker):
    a follower takes the time it spent on the way (in a pipe, behind a worker's start)
    off its ttl; a clock behind ours counts as no time (what is left of the token's
    mandatory window covers the rest).
    """

    header: str | None
    ttl: float | None = None
    failed: str | None = None
    at: float | None = field(default=None, compare=False)

    @property
    def usable(self) -> bool:
        return self.failed is None and (self.ttl is None or self.ttl > 0)


#: A follower's question after a 401: `ask(used)` -> (a retry may help, the lease now).
Ask = Callable[[str | None], Awaitable[tuple[bool, Lease]]]
#: A follower's way to get the lease to send now (None: wait for pushes instead).
Fetch = Callable[[], Awaitable[Lease]]


class TokenProvider(Protocol):
    """Holds the current bearer token of a run."""

    def authorization(self) -> str | None:
        """The current `Authorization` value (no await, no I/O); None: call `wait_authorization`."""
        ...

    async def wait_authorization(self) -> str | None:
        """The header value once the token is usable again (mandatory window); AuthError
        when none is within --token-wait (the call must not go out)."""
        ...

    def lease(self) -> Lease:
        """The current header and how long it may still be sent (no await, no I/O)."""
        ...

    async def refresh_after_401(self, used: str | None) -> bool:
        """A call sent with `used` got a 401: True when a retry with a new token may help."""
        ...

    async def maintain(self) -> None:
        """Keep the token fresh until cancelled; raises AuthError when it has to give up."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """The tokens handed out that an answer may still echo (engine/core/kept.py),
        for redaction of output."""
        ...

    def token_stats(self) -> TokenStats | None:
        """Token events of the run; None for a static token."""
        ...


# -- time -----------------------------------------------------------------------------------


class Clock(Protocol):
    """Monotonic seconds, and a sleep to a point of that time (a test clock moves on demand)."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    """The real clock: `time.monotonic`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - time.monotonic()))


MONOTONIC = MonotonicClock()


@asynccontextmanager
async def move_on_at(clock: Clock, deadline: float) -> AsyncIterator[None]:
    """anyio's `move_on_after`, on `clock`: the body is cancelled once `deadline` comes."""
    error: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def alarm() -> None:
            await clock.sleep_until(deadline)
            tg.cancel_scope.cancel()

        tg.start_soon(alarm)
        try:
            yield
        except Exception as exc:  # raised as it is, not inside the task group's ExceptionGroup
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error


# -- the single flight ------------------------------------------------------------------------


class _Flight(Generic[V]):
    __slots__ = ("answer", "landed")

    def __init__(self) -> None:
        self.landed = anyio.Event()
        self.answer: tuple[V] | None = None  # set once the call returned


class SingleFlight(Generic[K, V]):
    """One call per key at a time: callers that come while it runs share its answer.

    `remember`: an answer is kept and given for its key from then on (no second call);
    otherwise the next caller after the flight calls again. A call that raises or is
    cancelled answers nobody: one of its waiters calls anew.
    """

    __slots__ = ("_flights", "_remember")

    def __init__(self, *, remember: bool = False) -> None:
        self._flights: dict[K, _Flight[V]] = {}
        self._remember = remember

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        while (flight := self._flights.get(key)) is not None:
            await flight.landed.wait()
            if flight.answer is not None:
                return flight.answer[0]
        flight = self._flights[key] = _Flight()
        try:
            flight.answer = (await call(),)
        finally:
            if flight.answer is None or not self._remember:
                del self._flights[key]
            flight.landed.set()
        return flight.answer[0]


# -- the static token ----------------------------------------------------------------------


class StaticToken:
    """A token issued once by Criteo; a 401 cannot be mended by asking again."""

    __slots__ = ("_header",)

    def __init__(self, token: str | None) -> None:
        self._header = None if token is None else f"Bearer {token}"

    def authorization(self) -> str | None:
        return self._header

    async def wait_authorization(self) -> str | None:
        return self._header

    def lease(self) -> Lease:
        return Lease(self._header)

    async def refresh_after_401(self, used: str | None) -> bool:
        return False

    async def maintain(self) -> None:
        return None

    def secrets(self) -> tuple[str, ...]:
        return () if self._header is None else (self._header[7:],)

    def token_stats(self) -> TokenStats | None:
        return None


# -- one token for every process of a run ------------------------------------------------


class TokenBroker:
    """The run's one provider, shared by every process of the run.

    Lives where the credentials are (the --workers parent, the Ray token actor) and is a
    TokenProvider itself. Followers elsewhere call `renew` after a 401 and `current` for
    the lease to send. One renewal per refused value for the whole run: its answer
    stands for every later report of that value, however many followers make it.
    The calls that waited for a token are counted where they wait: a follower reports
    its count (`followers_waited`), and `token_stats` adds them to the provider's.
    """

    __slots__ = ("_flights", "_follower_waits", "provider")

    def __init__(self, provider: TokenProvider) -> None:
        self.provider = provider
        self._flights: SingleFlight[str | None, bool] = SingleFlight(remember=True)
        self._follower_waits: dict[object, int] = {}  # by follower: its calls that waited

    def authorization(self) -> str | None:
        return self.provider.authorization()

    async def wait_authorization(self) -> str | None:
        return await self.provider.wait_authorization()

    def lease(self) -> Lease:
        return _stamped(self.provider.lease())

    async def current(self) -> Lease:
        """The lease to send now; in a mandatory window, once the renewal is done (or,
        when none came within --token-wait, a lease that says why: `failed`)."""
        lease = self.lease()
        if lease.usable or lease.failed is not None:
            return lease
        try:
            await self.provider.wait_authorization()
        except AuthError as exc:
            return Lease(None, 0.0, str(exc))
        return self.lease()

    async def refresh_after_401(self, used: str | None) -> bool:
        current = self.provider.authorization()
        if current is not None and current != used:
            return True  # renewed since that call was sent: retry, ask nothing
        # Even around a provider that is not single-flight itself, one renewal for all.
        return await self._flights.run(used, partial(self.provider.refresh_after_401, used))

    async def renew(self, used: str | None) -> tuple[bool, Lease]:
        """A follower's 401 with `used`: (a retry may help, the lease to send now)."""
        ok = await self.refresh_after_401(used)
        return ok, self.lease()

    async def maintain(self) -> None:
        await self.provider.maintain()

    def secrets(self) -> tuple[str, ...]:
        return self.provider.secrets()

    def followers_waited(self, follower: object, waits: int) -> None:
        """`follower` (a worker's index) has had `waits` calls wait for a token so far:
        a running total, so a report that comes twice or late counts once."""
        self._follower_waits[follower] = max(waits, self._follower_waits.get(follower, 0))

    def token_stats(self) -> TokenStats | None:
        stats = self.provider.token_stats()
        if stats is None or not self._follower_waits:
            return stats
        # A copy: the provider's own figures stay its own.
        return replace(stats, waits=stats.waits + sum(self._follower_waits.values()))


def _stamped(lease: Lease) -> Lease:
    """`lease` with the time it was read, for a follower in another process."""
    if lease.ttl is None or lease.failed is not None:
        return lease
    return Lease(lease.header, lease.ttl, None, time.time())


class FollowerToken:
    """A TokenProvider without credentials: follows the broker of its run.

    Its lease is pushed (`set`, by whoever hears of a new one) or fetched (`fetch`,
    when given: `wait_authorization` asks it). The header is sent only while its lease
    lasts (on this process's clock); past it, a call waits for the next push (or
    fetches), at most `wait` seconds (--token-wait), then raises AuthError, as at once
    when a lease says the provider gave up. A 401 asks the broker side (`ask`) once per
    refused value, however many calls report it, and its answer stands for that value.
    `waits` counts the calls that waited for a token here; the broker's side has no
    other way to know them (a --workers child reports it to the parent's broker).
    """

    __slots__ = (
        "_ask",
        "_changed",
        "_clock",
        "_failed",
        "_fetch",
        "_flights",
        "_header",
        "_seen",
        "_until",
        "_wait",
        "waits",
    )

    def __init__(
        self,
        lease: Lease,
        ask: Ask,
        *,
        fetch: Fetch | None = None,
        wait: float = DEFAULT_TOKEN_WAIT,
        clock: Clock = MONOTONIC,
        keep: float = math.inf,
    ) -> None:
        """`keep`: seconds a replaced token stays in `secrets()` (engine/core/kept.py)."""
        self._header: str | None = None
        self._until = -math.inf  # on `clock`: the header may be sent before this
        self._failed: str | None = None
        self._ask = ask
        self._fetch = fetch
        self._wait = wait
        self._clock = clock
        self._flights: SingleFlight[str | None, bool] = SingleFlight(remember=True)
        self._changed: anyio.Event | None = None  # made by the first waiter
        self._seen = KeptTokens(keep=keep)
        self.waits = 0  # delivery calls that waited for a token (TokenStats.waits)
        self.set(lease)

    def set(self, lease: Lease) -> None:
        """A new lease (a push, or the broker's answer). A provider that gave up stays so."""
        header = lease.header
        self._header = header
        self._failed = self._failed or lease.failed
        if self._failed is not None:
            self._until = -math.inf
        elif lease.ttl is None:
            self._until = math.inf
        else:
            on_the_way = 0.0 if lease.at is None else max(0.0, time.time() - lease.at)
            self._until = self._clock.now() + lease.ttl - on_the_way
        if header is not None and header.startswith("Bearer "):
            self._seen.add(header[7:], self._clock.now())
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def authorization(self) -> str | None:
        if self._clock.now() < self._until:
            return self._header
        return None

    def lease(self) -> Lease:
        if self._failed is not None:
            return Lease(None, 0.0, self._failed)
        if self._until == math.inf:
            return Lease(self._header)
        left = self._until - self._clock.now()
        return Lease(self._header, left) if left > 0 else Lease(None, 0.0)

    def _settled(self) -> bool:
        return self._failed is not None or self._clock.now() < self._until

    async def wait_authorization(self) -> str | None:
        self.waits += 1  # as the provider counts its own callers (engine/net/oauth.py)
        if not self._settled() and self._fetch is not None:
            self.set(await self._fetch())  # the broker side waits for its renewal
        if not self._settled():  # wait for a push
            async with move_on_at(self._clock, self._clock.now() + self._wait):
                while not self._settled():
                    if self._changed is None:
                        self._changed = anyio.Event()
                    await self._changed.wait()
        if self._failed is None and self._clock.now() < self._until:
            return self._header
        raise AuthError(
            self._failed
            or f"no usable token came within {self._wait:g}s (--token-wait): the token "
            "endpoint did not renew it in time; --resume sends the rest"
        )

    async def refresh_after_401(self, used: str | None) -> bool:
        if self._failed is not None:
            return False
        if self._header != used:
            return True  # a newer token arrived meanwhile
        return await self._flights.run(used, partial(self._ask_broker, used))

    async def _ask_broker(self, used: str | None) -> bool:
        ok, lease = await self._ask(used)
        self.set(lease)
        return ok

    async def maintain(self) -> None:
        return None  # the broker's side keeps the token fresh

    def secrets(self) -> tuple[str, ...]:
        return self._seen.texts(self._clock.now())

    def token_stats(self) -> TokenStats | None:
        return None  # counted once, by the broker's provider (and `waits`, reported to it)
