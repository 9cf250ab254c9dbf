"""When a token is to be renewed, and what the token endpoint answered (pure).

Rules:
- Clock-free: every time comes in as an argument, on the monotonic clock of the provider
  that asks (engine/net/oauth.py); a token's window is measured from when its request was
  sent, so the server's clock and the transit time only ever make us renew early.
- Randomness comes in as a `draw` in [0, 1): the same draw gives the same window or delay.
- A failed answer is a value (`TokenFailure`), never an exception; its message is short
  and never carries the secrets it was given (one redactor: engine.core.secrets).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import orjson

from engine.core.secrets import Secrets, token_problem

#: Criteo's documented lifetime; assumed when an answer carries no `expires_in`.
DEFAULT_LIFETIME = 900.0
#: Shorter lifetimes are refused: renewing them would be a loop of token requests.
MIN_LIFETIME = 0.5
_MESSAGE_CHARS = 300


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


#: The window before the first token: calls must wait, the renewer has work to do.
NO_WINDOW = TokenWindow(0.0, -math.inf, -math.inf, -math.inf)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshPolicy:
    """Advisory/mandatory refresh (botocore's model), scaled to the token's lifetime.

    With Criteo's 900 s tokens: renew 225-169 s before expiry (google-auth's 3 min 45 s),
    retry failures with backoff (0.5 s doubling to 8 s) while the token keeps serving,
    and make calls wait only in the last 10 s. With a 2 s test token: renew 0.5-0.375 s
    before expiry, retry every 0.1 s (`retry_min`; the backoff alone would be 16-31 ms),
    wait in the last 0.25 s.

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
    #: The least spacing between two token requests, whatever the lifetime: a short-lived
    #: token must not make a herd of them.
    retry_min: float = 0.1
    #: Refused credentials (or a wrong URL) will not get better by asking again, and
    #: asking could lock the account: 1 s doubling to 60 s.
    refused_initial: float = 1.0
    refused_cap: float = 60.0

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

    def renewal_delay(
        self,
        attempt: int,
        failure: TokenFailure,
        *,
        window: TokenWindow,
        now: float,
        give_up_at: float,
        wait: float,
        draw: float,
    ) -> float:
        """Seconds before retry `attempt` (0-based) of a renewal that got `failure`.

        `retry_delay` while the token serves; once calls wait for it (mandatory window) or
        it expired, paced by `wait` (--token-wait) as at start, not by the lifetime;
        refused credentials spaced by seconds; then `next_try` (Retry-After, `give_up_at`:
        the renewer's last try, `retry_min`).
        """
        lifetime = window.expires_at - window.sent_at
        delay = self.retry_delay(attempt, lifetime=lifetime, draw=draw)
        if now >= window.mandatory_at:
            delay = max(delay, startup_delay(attempt, wait=wait, draw=draw))
        if failure.kind in ("refused", "wrong_url"):
            refused = min(self.refused_cap, self.refused_initial * 2.0 ** min(attempt, 30))
            delay = max(delay, refused * (0.5 + 0.5 * draw))
        return self.next_try(delay, failure, now=now, give_up_at=give_up_at)

    def next_try(
        self, backoff: float, failure: TokenFailure, *, now: float, give_up_at: float
    ) -> float:
        """Seconds before the next token request after `failure`, whoever asks (the first
        token at start, a renewal mid-run): `backoff`, not before the answer's Retry-After,
        but never past `give_up_at` (the end of --token-wait): a longer Retry-After does not
        make the asker give up early, its last try is made then. Never under `retry_min`.
        """
        delay = backoff if failure.retry_after is None else max(backoff, failure.retry_after)
        return max(self.retry_min, min(delay, give_up_at - now))


def startup_delay(attempt: int, *, wait: float, draw: float) -> float:
    """Seconds before retry `attempt` of the first token (endpoint down at start)."""
    initial = min(0.25, max(0.005, wait / 16))
    base = min(4.0, initial * 2.0 ** min(attempt, 30))
    return base * (0.5 + 0.5 * draw)


# -- token endpoint answers ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: str
    lifetime: float  # seconds, from `expires_in`


@dataclass(frozen=True, slots=True)
class TokenFailure:
    """Why no token came back. `refused`: the credentials were rejected (400/401/403);
    `wrong_url`: no token endpoint there (404, 405: --token-url is wrong); `tls`: the
    endpoint's certificate failed verification, or a handshake alert. `retry_after`: the
    seconds of the answer's Retry-After, when it had one."""

    kind: Literal["refused", "wrong_url", "unavailable", "tls"]
    message: str
    retry_after: float | None = None


_NO_SECRETS = Secrets()


def endpoint_message(text: str, secrets: Secrets = _NO_SECRETS) -> str:
    """`text` fit for a TokenFailure: redacted first, then cut short."""
    return secrets.redact(text)[:_MESSAGE_CHARS]


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


def _lifetime(data: dict[str, object]) -> float | None:
    """`expires_in` in seconds, or None when it is missing its point (too short, not a number)."""
    lifetime = data.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(lifetime, str):
        try:
            lifetime = float(lifetime)
        except ValueError:
            return None
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not (lifetime >= MIN_LIFETIME and math.isfinite(lifetime))
    ):
        return None
    return float(lifetime)


#: A token type worth naming in a message: one short word ("mac", "Basic").
_TYPE_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,19}")


def _quoted(token_type: object, token: str, secrets: Secrets) -> str:
    """` 'mac'`: the refused token type, when it is one short word that is neither a
    secret nor a piece of the token it came with; else nothing (an endpoint may put
    anything there, the token or part of it included)."""
    text = str(token_type)
    if not _TYPE_WORD.fullmatch(text) or text in token:
        return ""
    if Secrets((*secrets.texts(), token), min_length=1).redact(text) != text:
        return ""
    return f" {text!r}"


def _grant(body: bytes, secrets: Secrets) -> TokenGrant | TokenFailure:
    """An HTTP 200 answer: a usable token, or why it is not one (a message that quotes
    the answer quotes it redacted, the token it carried included)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return TokenFailure("unavailable", "HTTP 200 with a body that is not JSON")
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token.strip():
        return TokenFailure("unavailable", "HTTP 200 without an access_token")
    problem = token_problem(token.strip())
    if problem is not None:  # never sent: the endpoint counts as having refused
        return TokenFailure(
            "refused", f"HTTP 200 with an access_token holding {problem}, which no header can carry"
        )
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        return TokenFailure(
            "refused", f"token_type{_quoted(token_type, token, secrets)} is not Bearer"
        )
    lifetime = _lifetime(data)
    if lifetime is None:
        return TokenFailure(
            "unavailable", f"HTTP 200 with no usable expires_in (at least {MIN_LIFETIME:g}s)"
        )
    return TokenGrant(token.strip(), lifetime)


def _detail(status: int, body: bytes, secrets: Secrets) -> str:
    """What the answer says, on one line: its OAuth error, else its text without a
    repeat of the status (aiohttp's `404: Not Found`)."""
    detail = _oauth_error(body)
    if detail is None:
        # Redacted before it is cut short: a cut secret would escape its redaction.
        text = secrets.redact_bytes(body)[:800].decode("utf-8", "replace")[:200].strip()
        detail = " ".join(text.split())
        repeat = re.match(rf"{status}\b[:\s]*", detail)
        if repeat is not None and repeat.end() < len(detail):
            detail = detail[repeat.end() :]
    return detail or "no body"


#: Answers that say there is no token endpoint at the URL, not that the client is refused.
_WRONG_URL = {404: "Not Found", 405: "Method Not Allowed"}


def parse_token_answer(
    status: int,
    body: bytes,
    *,
    secrets: Secrets = _NO_SECRETS,
    retry_after: float | None = None,
) -> TokenGrant | TokenFailure:
    """Classify one answer of the token endpoint; messages never carry `secrets`.
    `retry_after`: the seconds of the answer's Retry-After header, kept on a failure."""
    if status == 200:
        return _grant(body, secrets)
    if status in _WRONG_URL:  # its body is a web server's page, not the endpoint's words
        message = f"HTTP {status} {_WRONG_URL[status]}: not a token endpoint (check --token-url)"
        return TokenFailure("wrong_url", message, retry_after)
    message = endpoint_message(f"HTTP {status} {_detail(status, body, secrets)}", secrets)
    # 408, 429 and 5xx may pass; any other 4xx (a refused client) will not get better by
    # asking again.
    if 400 <= status < 500 and status not in (408, 429):
        return TokenFailure("refused", message, retry_after)
    return TokenFailure("unavailable", message, retry_after)
