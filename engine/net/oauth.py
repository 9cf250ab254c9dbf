"""OAuthToken: one OAuth2 client-credentials token for a run, renewed in the background.

Rules:
- `start()` gets the first token before any delivery call; `maintain()` (one background
  task in the engine's task group) renews it ahead of expiry and is the only code that
  fetches after that.
- Calls never wait for a fresh token except in its mandatory window (all of them on the
  one renewal in progress) and after a 401 (single flight: one renewal for any number of
  401s on the current token, at most one per `min_401_interval`).
- A token is never handed out in its mandatory window or past it: a call that found no
  fresh token within `wait` (--token-wait), or after the renewer gave up, gets AuthError
  from `wait_authorization`, not the old token (the engine stops the run; that event is
  not written, so --resume sends it).
- Every timer (the renewal timer, retry delays, the --token-wait bounds) goes through the
  injected `Clock`: a test moves time, nothing sleeps for real. Expiry is measured from
  when the token request was sent (the window arithmetic is engine/core/tokenwindow.py).
- Token requests are spaced (RefreshPolicy.renewal_delay, at start `startup_delay`), and
  one rule (RefreshPolicy.next_try) ends each delay: never closer than `retry_min`, a
  Retry-After honoured up to the end of the wait, where one last try is made (a longer
  Retry-After does not give up early). Refused credentials are spaced by seconds.
- A token that comes too late to be sent (its life is counted from the request) is a
  failed request, not a token: the messages say so.
- A stop mid-run says that --resume sends the rest (the events not sent are not written).
- The client secret and the tokens never go into a message; server text is redacted.
  `secrets()` is the tokens an answer may still echo (`KeptTokens`, engine/core/kept.py:
  replaced ones for `keep` seconds, --timeout plus a margin), not all.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio

from engine.config import DEFAULT_TOKEN_WAIT
from engine.core.kept import KeptTokens
from engine.core.stats import TokenStats
from engine.core.tokenwindow import (
    NO_WINDOW,
    RefreshPolicy,
    TokenFailure,
    TokenGrant,
    TokenWindow,
    startup_delay,
)
from engine.core.urls import without_credentials
from engine.errors import AuthError
from engine.net.auth import MONOTONIC, Clock, Lease, SingleFlight, move_on_at

if TYPE_CHECKING:
    from engine.net.auth import FollowerToken, StaticToken, TokenBroker, TokenProvider


#: The end of a stop line mid-run: the events not sent were not written.
_RESUME = "; --resume sends the rest"


class TokenSource(Protocol):
    """One token request (engine/net/token_client.py does it over HTTP)."""

    url: str

    async def fetch(self) -> TokenGrant | TokenFailure: ...


class OAuthToken:
    """One shared OAuth2 client-credentials token, renewed in the background.

    `start()` gets the first token (exit 3 when refused, or after `wait` seconds of an
    unavailable endpoint); `maintain()` then runs in the engine's task group.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        wait: float = DEFAULT_TOKEN_WAIT,
        policy: RefreshPolicy | None = None,
        min_401_interval: float = 1.0,
        clock: Clock = MONOTONIC,
        rng: random.Random | None = None,
        keep: float = math.inf,
    ) -> None:
        """`keep`: seconds a replaced token stays in `secrets()` (engine/core/kept.py)."""
        self._source = source
        self._wait = wait
        self._policy = policy or RefreshPolicy()
        self._min_401_interval = min_401_interval
        self._clock = clock
        self._rng = rng or random.Random()
        self._header: str | None = None
        self._tokens = KeptTokens(keep=keep)
        self._window = NO_WINDOW
        # The header may be handed out before this (the window's mandatory_at; -inf
        # before the first token and once the renewer gave up).
        self._usable_until = -math.inf
        self._generation = 0  # bumped by every new token
        self._renewed = anyio.Event()  # set (then replaced) after every renewal attempt
        self._wake = anyio.Event()  # a 401 asks for a renewal now
        self._after_401: SingleFlight[str | None, bool] = SingleFlight()
        self._forced = False
        self._last_forced = -float("inf")
        self._failed: str | None = None
        self._last_failure: str | None = None  # the token endpoint's last failed answer
        self._late: str | None = None  # why the last token that came too late was useless
        self.stats = TokenStats()

    @property
    def _shown_url(self) -> str:
        """The token URL as messages show it: no password, no query values."""
        return without_credentials(self._source.url)

    @property
    def window(self) -> TokenWindow:
        """The current token's window (on the provider's clock)."""
        return self._window

    # -- the hot path -------------------------------------------------------------------

    def authorization(self) -> str | None:
        if self._clock.now() < self._usable_until:
            return self._header
        return None

    def lease(self) -> Lease:
        if self._failed is not None:
            return Lease(None, 0.0, self._failed)
        left = self._usable_until - self._clock.now()
        return Lease(self._header, left) if left > 0 else Lease(None, 0.0)

    async def wait_authorization(self) -> str | None:
        self.stats.waits += 1
        await self._until(
            self._clock.now() + self._wait,
            lambda: self._failed is not None or self._clock.now() < self._usable_until,
        )
        header = self.authorization()
        if header is None:  # never the old token: it is about to expire, or has
            raise AuthError(self._failed or self._no_fresh_token())
        return header

    def _no_fresh_token(self) -> str:
        text = f"token endpoint {self._shown_url} gave no fresh token within {self._wait:g}s"
        text += " (--token-wait)"
        if self._last_failure:
            text += f": {self._cause(self._last_failure)}"
        return text + _RESUME

    def _cause(self, message: str) -> str:
        """`message`, and a token that came too late before it (a slow endpoint's next
        request may time out, and that alone would hide why the tokens were useless)."""
        if self._late is None or self._late == message:
            return message
        return f"{message} (before that, {self._late})"

    async def refresh_after_401(self, used: str | None) -> bool:
        if used != self._header:
            return self._header is not None  # renewed since that call was sent
        if self._failed is not None:
            return False
        return await self._after_401.run(used, self._renew_after_401)

    async def _renew_after_401(self) -> bool:
        """Have the renewer renew now (unless it just did for a 401) and wait for it."""
        if not self._forced:
            now = self._clock.now()
            # A server that refuses fresh tokens too must not cost a token per event.
            if now - self._last_forced < self._min_401_interval:
                return False
            self._forced, self._last_forced = True, now
            self._wake.set()
        generation = self._generation
        await self._until(
            self._clock.now() + self._wait,
            lambda: self._generation != generation or self._failed is not None,
        )
        return self._generation != generation

    async def _until(self, deadline: float, ready: Callable[[], bool]) -> None:
        """Wait for renewal attempts until `ready()`, or until `deadline`."""
        if ready():
            return
        async with move_on_at(self._clock, deadline):
            while not ready():
                await self._renewed.wait()

    def secrets(self) -> tuple[str, ...]:
        return self._tokens.texts(self._clock.now())

    def token_stats(self) -> TokenStats:
        return self.stats

    # -- fetching -----------------------------------------------------------------------

    def _install(self, grant: TokenGrant, sent_at: float) -> None:
        self._window = self._policy.window(
            sent_at=sent_at, lifetime=grant.lifetime, draw=self._rng.random()
        )
        self._usable_until = self._window.mandatory_at
        self._header = f"Bearer {grant.access_token}"
        self._tokens.add(grant.access_token, self._clock.now())
        self._generation += 1
        self.stats.fetched += 1

    async def _fetch(self, limit: float) -> tuple[TokenGrant | TokenFailure, float]:
        sent_at = self._clock.now()
        outcome: TokenGrant | TokenFailure = TokenFailure(
            "unavailable", f"no answer within {limit:.3g}s"
        )
        async with move_on_at(self._clock, sent_at + limit):
            outcome = await self._source.fetch()
        self.stats.requests += 1
        if isinstance(outcome, TokenGrant):
            outcome = self._in_time(outcome, sent_at)
        if isinstance(outcome, TokenFailure):
            self.stats.failures += 1
            self._last_failure = outcome.message
        return outcome, sent_at

    def _in_time(self, grant: TokenGrant, sent_at: float) -> TokenGrant | TokenFailure:
        """`grant`, or a failure when it came too late to be sent (its life counted from
        the request: it expired, or is in its mandatory window, on arrival)."""
        window = self._policy.window(sent_at=sent_at, lifetime=grant.lifetime, draw=0.0)
        now = self._clock.now()
        if now < window.mandatory_at:
            return grant
        took = f"a token with expires_in {grant.lifetime:g}s came {now - sent_at:.3g}s after"
        if now >= window.expires_at:
            self._late = f"{took} it was asked for: it expired before it arrived"
        else:
            left = window.expires_at - now
            self._late = f"{took} it was asked for, {left:.2g}s before expiry: too late to send"
        return TokenFailure("unavailable", self._late)

    async def start(self) -> None:
        """Get the first token, before any delivery call; raises AuthError."""
        url = self._shown_url
        deadline = self._clock.now() + self._wait
        attempt, limit, last = 0, self._wait, False
        while True:
            outcome, sent_at = await self._fetch(limit)
            if isinstance(outcome, TokenGrant):
                self._install(outcome, sent_at)
                return
            if outcome.kind == "refused":
                raise AuthError(
                    f"token endpoint {url} refused the client credentials: {outcome.message}"
                )
            if outcome.kind == "wrong_url":
                raise AuthError(f"token endpoint {url} answered {outcome.message}")
            if outcome.kind == "tls":  # as on delivery calls: not retried
                raise AuthError(f"token endpoint {url}: {outcome.message}")
            now = self._clock.now()
            if last or now >= deadline:
                raise AuthError(
                    f"token endpoint {url} gave no token within {self._wait:g}s "
                    f"(--token-wait): {self._cause(outcome.message)}"
                )
            backoff = startup_delay(attempt, wait=self._wait, draw=self._rng.random())
            delay = self._policy.next_try(backoff, outcome, now=now, give_up_at=deadline)
            # Tries before the deadline end at it; the last one, at the deadline, gets as
            # long as a renewal's request (a cut-off one would only say "no answer").
            last = now + delay >= deadline
            limit = self._wait if last else deadline - now - delay
            await self._clock.sleep_until(now + delay)
            attempt += 1

    async def maintain(self) -> None:
        while True:
            if not self._forced:
                async with move_on_at(self._clock, self._window.refresh_at):
                    await self._wake.wait()
            self._wake = anyio.Event()
            if self._forced or self._clock.now() >= self._window.refresh_at:
                await self._renew()

    async def _renew(self) -> None:
        started = self._clock.now()
        attempt = 0
        while True:
            outcome, sent_at = await self._fetch(max(0.001, self._wait))
            if isinstance(outcome, TokenGrant):
                self.stats.renewals += 1
                if self._forced:
                    self.stats.after_401 += 1
                self.stats.record_renewal((self._clock.now() - started) * 1000.0)
                self._install(outcome, sent_at)
                self._forced = False
                self._signal()
                return
            self._signal()
            now = self._clock.now()
            expired = now >= self._window.expires_at
            refused = outcome.kind in ("refused", "wrong_url")
            # Refused credentials will not come back: give up once the token in hand is
            # dead too (expired, or refused by the delivery host). An unavailable endpoint
            # is tried until the token has expired and `wait` seconds have gone by.
            if (refused and (expired or self._forced)) or (expired and now - started >= self._wait):
                why = "it expired" if expired else "the delivery host refused it (HTTP 401)"
                self._failed = (
                    f"token endpoint {self._shown_url} could not renew the token "
                    f"and {why}: {self._cause(outcome.message)}{_RESUME}"
                )
                self._usable_until = -math.inf  # nothing more goes out with it
                self._signal()
                raise AuthError(self._failed)
            give_up_at = self._window.expires_at
            if not refused:
                give_up_at = max(give_up_at, started + self._wait)
            delay = self._policy.renewal_delay(
                attempt,
                outcome,
                window=self._window,
                now=now,
                give_up_at=give_up_at,
                wait=self._wait,
                draw=self._rng.random(),
            )
            await self._clock.sleep_until(self._clock.now() + delay)
            attempt += 1

    def _signal(self) -> None:
        self._renewed.set()
        self._renewed = anyio.Event()


if TYPE_CHECKING:  # mypy proves that every provider type is a TokenProvider
    _PROVIDERS: tuple[type[TokenProvider], ...] = (
        StaticToken,
        OAuthToken,
        TokenBroker,
        FollowerToken,
    )
