"""Token providers: what goes in the Authorization header of a delivery call.

Rules:
- A call reads the current header value without awaiting (`authorization()`). Only two
  things make a call wait: a token in its mandatory window (`wait_authorization`, all
  callers wait on the one renewal in progress) and a 401 (`refresh_after_401`, single
  flight: any number of 401s on the current token cause one token request).
- One background task (`maintain`, run in the engine's task group) renews the dynamic
  token ahead of expiry; it is the only code that fetches after the first token.
- Expiry is measured on the monotonic clock from when the token request was sent, so
  the server's clock and the transit time only ever make us renew early.
- The window arithmetic (`RefreshPolicy`, `TokenWindow`, `parse_token_answer`) is pure
  and clock-free: time comes in as arguments. The provider takes an injected clock.
- The client secret and the tokens never go into a message; server text is redacted.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol

import anyio
import orjson

from engine.config import DEFAULT_TOKEN_WAIT
from engine.core.stats import TokenStats
from engine.errors import AuthError

#: Criteo's documented lifetime; assumed when an answer carries no `expires_in`.
DEFAULT_LIFETIME = 900.0
#: Shorter lifetimes are refused: renewing them would be a loop of token requests.
MIN_LIFETIME = 0.5

Clock = Callable[[], float]


class TokenProvider(Protocol):
    """Holds the current bearer token of a run."""

    def authorization(self) -> str | None:
        """The current `Authorization` value (no await, no I/O); None: call `wait_authorization`."""
        ...

    async def wait_authorization(self) -> str | None:
        """The header value once the token is usable again (mandatory window)."""
        ...

    async def refresh_after_401(self, used: str | None) -> bool:
        """A call sent with `used` got a 401: True when a retry with a new token may help."""
        ...

    async def maintain(self) -> None:
        """Keep the token fresh until cancelled; raises AuthError when it has to give up."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Every token handed out so far, for redaction of output."""
        ...

    def token_stats(self) -> TokenStats | None:
        """Token events of the run; None for a static token."""
        ...


class StaticToken:
    """A token issued once by Criteo; a 401 cannot be mended by asking again."""

    __slots__ = ("_header",)

    def __init__(self, token: str | None) -> None:
        self._header = None if token is None else f"Bearer {token}"

    def authorization(self) -> str | None:
        return self._header

    async def wait_authorization(self) -> str | None:
        return self._header

    async def refresh_after_401(self, used: str | None) -> bool:
        return False

    async def maintain(self) -> None:
        return None

    def secrets(self) -> tuple[str, ...]:
        return () if self._header is None else (self._header[7:],)

    def token_stats(self) -> TokenStats | None:
        return None


# -- the window (pure) --------------------------------------------------------------------


class Phase(Enum):
    FRESH = "fresh"  # nothing to do
    ADVISORY = "advisory"  # renew in the background; calls keep using the token
    MANDATORY = "mandatory"  # calls wait for the renewal in progress
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class TokenWindow:
    """When one token is to be renewed, on the monotonic clock."""

    sent_at: float
    refresh_at: float
    mandatory_at: float
    expires_at: float

    def phase(self, now: float) -> Phase:
        if now < self.refresh_at:
            return Phase.FRESH
        if now < self.mandatory_at:
            return Phase.ADVISORY
        if now < self.expires_at:
            return Phase.MANDATORY
        return Phase.EXPIRED


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshPolicy:
    """Advisory/mandatory refresh (botocore's model), scaled to the token's lifetime.

    With Criteo's 900 s tokens: renew 225-169 s before expiry (google-auth's 3 min 45 s),
    retry failures with backoff (0.5 s doubling to 8 s) while the token keeps serving,
    and make calls wait only in the last 10 s. With a 2 s test token: renew 0.5-0.375 s
    before expiry, retry every 16-31 ms, wait in the last 0.25 s.

    The mandatory window is at least `mandatory_min` (a call read its token before the
    window must still arrive before expiry, even on a lagging event loop), but never more
    than half the advisory window.
    """

    advisory_fraction: float = 0.25  # the advisory window: the last 25% of the lifetime
    jitter: float = 0.25  # renewal starts within the first quarter of that window
    mandatory_fraction: float = 0.05
    mandatory_min: float = 0.25  # seconds
    mandatory_max: float = 10.0  # seconds
    retry_initial_max: float = 0.5
    retry_cap_max: float = 8.0

    def _spans(self, lifetime: float) -> tuple[float, float]:
        """(advisory, mandatory) window lengths in seconds."""
        advisory = max(0.0, lifetime) * self.advisory_fraction
        mandatory = max(self.mandatory_min, lifetime * self.mandatory_fraction)
        return advisory, min(self.mandatory_max, mandatory, advisory / 2)

    def window(self, *, sent_at: float, lifetime: float, draw: float) -> TokenWindow:
        """The window of a token asked for at `sent_at`; `draw` in [0, 1) sets the jitter."""
        advisory, mandatory = self._spans(lifetime)
        expires_at = sent_at + max(0.0, lifetime)
        refresh_at = expires_at - advisory * (1.0 - self.jitter * draw)
        mandatory_at = expires_at - mandatory
        return TokenWindow(sent_at, min(refresh_at, mandatory_at), mandatory_at, expires_at)

    def retry_delay(self, attempt: int, *, lifetime: float, draw: float) -> float:
        """Seconds before retry number `attempt` (0-based) of a failed renewal.

        Exponential with "equal jitter" (half fixed, half drawn), scaled to the room
        between the latest renewal start and the mandatory window, so that a short
        lifetime still gets several tries before calls have to wait.
        """
        advisory, mandatory = self._spans(lifetime)
        room = advisory * (1.0 - self.jitter) - mandatory
        initial = min(self.retry_initial_max, max(0.005, room / 8))
        cap = min(self.retry_cap_max, max(initial, room / 4))
        base = min(cap, initial * 2.0 ** min(attempt, 30))
        return base * (0.5 + 0.5 * draw)


def startup_delay(attempt: int, *, wait: float, draw: float) -> float:
    """Seconds before retry `attempt` of the first token (endpoint down at start)."""
    initial = min(0.25, max(0.005, wait / 16))
    base = min(4.0, initial * 2.0 ** min(attempt, 30))
    return base * (0.5 + 0.5 * draw)


# -- token endpoint answers (pure) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: str
    lifetime: float  # seconds, from `expires_in`


@dataclass(frozen=True, slots=True)
class TokenFailure:
    """Why no token came back. `refused`: the credentials were rejected (400/401/403)."""

    kind: Literal["refused", "unavailable"]
    message: str


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _oauth_error(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    text = str(data["error"])
    if isinstance(data.get("error_description"), str):
        text += f" ({data['error_description']})"
    return text


def parse_token_answer(
    status: int, body: bytes, *, secrets: tuple[str, ...] = ()
) -> TokenGrant | TokenFailure:
    """Classify one answer of the token endpoint; messages never carry `secrets`."""
    if status == 200:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return TokenFailure("unavailable", "HTTP 200 with a body that is not JSON")
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token.strip():
            return TokenFailure("unavailable", "HTTP 200 without an access_token")
        token_type = data.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            return TokenFailure("refused", f"token_type {str(token_type)[:40]!r} is not Bearer")
        lifetime = data.get("expires_in", DEFAULT_LIFETIME)
        if isinstance(lifetime, str):
            try:
                lifetime = float(lifetime)
            except ValueError:
                lifetime = None
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or not (lifetime >= MIN_LIFETIME and math.isfinite(lifetime))
        ):
            return TokenFailure(
                "unavailable", f"HTTP 200 with no usable expires_in (at least {MIN_LIFETIME:g}s)"
            )
        return TokenGrant(token.strip(), float(lifetime))
    detail = _oauth_error(body)
    if detail is None:
        text = body[:200].decode("utf-8", "replace").strip()
        detail = " ".join(text.split()) or "no body"
    message = _redact(f"HTTP {status} {detail}", secrets)[:300]
    # 408, 429 and 5xx may pass; any other 4xx (a wrong --token-url answering 404, a
    # refused client) will not get better by asking again.
    if 400 <= status < 500 and status not in (408, 429):
        return TokenFailure("refused", message)
    return TokenFailure("unavailable", message)


# -- the provider -------------------------------------------------------------------------


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
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._source = source
        self._wait = wait
        self._policy = policy or RefreshPolicy()
        self._min_401_interval = min_401_interval
        self._clock = clock
        self._rng = rng or random.Random()
        self._header: str | None = None
        self._tokens: list[str] = []
        self._lifetime = 0.0
        self._window = TokenWindow(0.0, -math.inf, -math.inf, -math.inf)
        self._generation = 0  # bumped by every new token
        self._renewed = anyio.Event()  # set (then replaced) after every renewal attempt
        self._wake = anyio.Event()  # a 401 asks for a renewal now
        self._forced = False
        self._last_forced = -math.inf
        self._failed: str | None = None
        self.stats = TokenStats()

    # -- the hot path -------------------------------------------------------------------

    def authorization(self) -> str | None:
        if self._clock() < self._window.mandatory_at:
            return self._header
        return None

    async def wait_authorization(self) -> str | None:
        self.stats.waits += 1
        with anyio.move_on_after(self._wait):
            while self._failed is None and self._clock() >= self._window.mandatory_at:
                await self._renewed.wait()
        # Still no fresh token: send what there is; a 401 becomes that event's record.
        return self._header

    async def refresh_after_401(self, used: str | None) -> bool:
        if used != self._header:
            return self._header is not None  # renewed since that call was sent
        if self._failed is not None:
            return False
        if not self._forced:
            now = self._clock()
            # A server that refuses fresh tokens too must not cost a token per event.
            if now - self._last_forced < self._min_401_interval:
                return False
            self._forced, self._last_forced = True, now
            self._wake.set()
        generation = self._generation
        with anyio.move_on_after(self._wait):
            while self._generation == generation and self._failed is None:
                await self._renewed.wait()
        return self._generation != generation

    def secrets(self) -> tuple[str, ...]:
        return tuple(self._tokens)

    def token_stats(self) -> TokenStats:
        return self.stats

    # -- fetching -----------------------------------------------------------------------

    def _install(self, grant: TokenGrant, sent_at: float) -> None:
        self._window = self._policy.window(
            sent_at=sent_at, lifetime=grant.lifetime, draw=self._rng.random()
        )
        self._lifetime = grant.lifetime
        self._header = f"Bearer {grant.access_token}"
        self._tokens.append(grant.access_token)
        self._generation += 1
        self.stats.fetched += 1

    async def _fetch(self, limit: float) -> tuple[TokenGrant | TokenFailure, float]:
        sent_at = self._clock()
        outcome: TokenGrant | TokenFailure = TokenFailure(
            "unavailable", f"no answer within {limit:.3g}s"
        )
        with anyio.move_on_after(limit):
            outcome = await self._source.fetch()
        self.stats.requests += 1
        if isinstance(outcome, TokenFailure):
            self.stats.failures += 1
        return outcome, sent_at

    async def start(self) -> None:
        """Get the first token, before any delivery call; raises AuthError."""
        url = self._source.url
        deadline = self._clock() + self._wait
        attempt = 0
        while True:
            outcome, sent_at = await self._fetch(max(0.001, deadline - self._clock()))
            if isinstance(outcome, TokenGrant):
                self._install(outcome, sent_at)
                return
            if outcome.kind == "refused":
                raise AuthError(
                    f"token endpoint {url} refused the client credentials: {outcome.message}"
                )
            delay = startup_delay(attempt, wait=self._wait, draw=self._rng.random())
            if self._clock() + delay >= deadline:
                raise AuthError(
                    f"token endpoint {url} gave no token within {self._wait:g}s "
                    f"(--token-wait): {outcome.message}"
                )
            await anyio.sleep(delay)
            attempt += 1

    async def maintain(self) -> None:
        while True:
            if not self._forced:
                with anyio.move_on_after(max(0.0, self._window.refresh_at - self._clock())):
                    await self._wake.wait()
            self._wake = anyio.Event()
            if self._forced or self._clock() >= self._window.refresh_at:
                await self._renew()

    async def _renew(self) -> None:
        started = self._clock()
        attempt = 0
        while True:
            outcome, sent_at = await self._fetch(max(0.001, self._wait))
            if isinstance(outcome, TokenGrant):
                self.stats.renewals += 1
                if self._forced:
                    self.stats.after_401 += 1
                self.stats.record_renewal((self._clock() - started) * 1000.0)
                self._install(outcome, sent_at)
                self._forced = False
                self._signal()
                return
            self._signal()
            now = self._clock()
            expired = now >= self._window.expires_at
            refused = outcome.kind == "refused"
            # Refused credentials will not come back: give up once the token in hand is
            # dead too (expired, or refused by the delivery host). An unavailable endpoint
            # is tried until the token has expired and `wait` seconds have gone by.
            if (refused and (expired or self._forced)) or (expired and now - started >= self._wait):
                why = "it expired" if expired else "the delivery host refused it (HTTP 401)"
                self._failed = (
                    f"token endpoint {self._source.url} could not renew the token "
                    f"and {why}: {outcome.message}"
                )
                self._signal()
                raise AuthError(self._failed)
            delay = self._policy.retry_delay(
                attempt, lifetime=self._lifetime, draw=self._rng.random()
            )
            await anyio.sleep(delay)
            attempt += 1

    def _signal(self) -> None:
        self._renewed.set()
        self._renewed = anyio.Event()
