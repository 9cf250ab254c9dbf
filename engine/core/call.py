"""The decisions for one event's call, as a sans-IO generator (after httpx's `auth_flow`).

A driver starts `CallFlow.start(event)`, performs each effect the flow yields and sends
its answer back, until the flow returns the event's record (None: not answered, the run
halted). The table of effects and their answers:

    Permit               -> bool: the right to start a call (--rate); False when halted
    SlowDown(seconds)    -> bool: the adaptive rate's wait was slept; False when halted
    Authorize            -> str | None: the Authorization header to send now
    Send(authorization)  -> Response: the call, made with that header
    Renew(used)          -> bool: after a 401 sent with `used`, a newer token is there
    Backoff(seconds)     -> bool: the wait before a retry was slept; False when halted

Rules:
- Each attempt: the adaptive rate's wait, a permit, then (first attempt only) the retry
  budget's deposit, then Authorize and Send: a retry takes a permit like a first call.
- A 401 asks for a renewal, at most once per event; when one comes the call is sent
  again and "http_401" is listed in `retries` but not counted against --retries. A
  refused renewal, or a second 401, is the event's record.
- A retryable answer (core/retry.py's `retry_reason`) goes to the `RetryPolicy`: a wait
  (Backoff) or a final record whose error carries the policy's `final` text. A 429/503
  is first told to the adaptive rate.
- Every attempt's status is told to the run's `ThrottleWatch` (core/stops.py), which
  times how long the server has refused every call; the driver asks it when a record
  ends refused.
- No clock is read here but through the injected `clock` (monotonic, for the adaptive
  rate) and `wall_clock` (epoch seconds, for Retry-After dates).
- The common path (permit, authorize, send, done) allocates nothing but the generator
  and the record: Permit and Authorize are singletons, and one Send is reused while the
  header stays the same object (until the token is renewed).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from engine.core.events import Event
from engine.core.rates import AdaptiveRate
from engine.core.records import NO_SECRETS, Response, Result, answered, http_kind
from engine.core.retry import THROTTLE_STATUSES, RetryPolicy, retry_reason
from engine.core.secrets import Secrets
from engine.core.stops import ThrottleWatch

_UNAUTHORIZED = http_kind(401)


@dataclass(frozen=True, slots=True)
class Permit:
    """Wait for the right to start a call; answer False when the run halted."""


@dataclass(frozen=True, slots=True)
class SlowDown:
    """Sleep `seconds` for the adaptive rate; answer False when the run halted meanwhile."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Authorize:
    """Answer the Authorization header to send now (waiting out a token renewal)."""


@dataclass(frozen=True, slots=True)
class Send:
    """Make the call with `authorization`; answer its Response."""

    authorization: str | None


@dataclass(frozen=True, slots=True)
class Renew:
    """A 401 came back for `used`; answer True when a newer token is there to retry with."""

    used: str | None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Sleep `seconds` before a retry; answer False when the run halted meanwhile."""

    seconds: float


Effect = Permit | SlowDown | Authorize | Send | Renew | Backoff

PERMIT = Permit()
AUTHORIZE = Authorize()

#: Yields effects, is sent their answers (typed per effect in the module's table: one
#: generator has one send type, so it is Any here and annotated where it is received),
#: returns the event's record or None.
Flow = Generator[Effect, Any, Result | None]


class CallFlow:
    """The rules of one run's calls; `start(event)` is the flow of one event."""

    __slots__ = (
        "_adaptive",
        "_clock",
        "_policy",
        "_secrets",
        "_send",
        "_throttle",
        "_wall_clock",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        adaptive: AdaptiveRate | None = None,
        secrets: Secrets = NO_SECRETS,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        throttle: ThrottleWatch | None = None,
    ) -> None:
        self._policy = policy
        self._throttle = throttle
        self._adaptive = adaptive
        self._secrets = secrets
        self._clock = clock
        self._wall_clock = wall_clock
        self._send = Send(None)

    def start(self, event: Event) -> Flow:
        """The flow of `event` (see the module's table of effects)."""
        policy = self._policy
        adaptive = self._adaptive
        throttle = self._throttle
        attempts = 0
        retries: tuple[str, ...] = ()
        renewed = False
        while True:
            if adaptive is not None:
                wait = adaptive.reserve(self._clock())
                if wait > 0:
                    slept: bool = yield SlowDown(wait)
                    if not slept:
                        return None
            permitted: bool = yield PERMIT
            if not permitted:
                return None
            if adaptive is not None:
                adaptive.on_send(self._clock())
            if attempts == 0:
                policy.budget.on_first_attempt()
            authorization: str | None = yield AUTHORIZE
            send = self._send
            if send.authorization is not authorization:  # the same object until renewed
                send = self._send = Send(authorization)
            response: Response = yield send
            attempts += 1
            status = response.status
            # (a call and its clock read only when the watch has something to note)
            if throttle is not None and (status in THROTTLE_STATUSES or throttle.since is not None):
                throttle.saw(status)
            if status == 401 and not renewed:
                fresh: bool = yield Renew(authorization)
                if fresh:
                    renewed = True
                    retries += (_UNAUTHORIZED,)
                    continue
            reason = retry_reason(status, response.error_kind)
            note = None
            if reason is not None:
                if adaptive is not None and status in THROTTLE_STATUSES:
                    adaptive.on_throttle(self._clock())
                done = len(retries) - renewed  # the 401 retry is not one of --retries
                decision = policy.decide(done, response.retry_after, now=self._wall_clock())
                if decision.final is None:
                    retries += (reason,)
                    slept = yield Backoff(decision.wait)
                    if not slept:
                        return None
                    continue
                note = decision.final
            return answered(event, response, attempts, self._secrets, retries=retries, note=note)
