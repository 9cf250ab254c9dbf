"""The mock's configuration (frozen) and its mutable per-app state.

Rules:
- One ``MockState`` per app; handlers mutate it, tests read it. Everything runs
  on the server's event loop, so no locks.
- Token expiry uses the server's monotonic clock; ``received_at`` of recorded
  requests uses wall time (it is for humans and logs).
- A revoked token stays revoked; so do the static tokens once revoked.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["MockConfig", "MockState", "RecordedRequest", "TokenCheck"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MockConfig:
    static_tokens: tuple[str, ...] = ("mock-token",)
    clients: tuple[tuple[str, str], ...] = (("mock-client", "mock-secret"),)
    token_lifetime: float = 900.0
    token_fail_every: int = 0
    token_down: bool = False
    token_latency: float = 0.0  # seconds added to every token answer
    latency: float = 0.0
    latency_jitter: float = 0.0
    fail_500: float = 0.0
    fail_503: float = 0.0
    fail_429: float = 0.0
    drop: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 5.0
    retry_after: str = "0"
    faults_first_attempt_only: bool = True
    seed: int = 0
    fixed_body: bytes | None = None
    record_requests: bool = False

    def __post_init__(self) -> None:
        probs = {
            "fail_500": self.fail_500,
            "fail_503": self.fail_503,
            "fail_429": self.fail_429,
            "drop": self.drop,
            "slow": self.slow,
        }
        for name, p in probs.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"MockConfig.{name} must be within 0..1, got {p!r}")
        if sum(probs.values()) > 1.0 + 1e-9:
            raise ValueError("MockConfig fault probabilities must add up to at most 1")
        if self.token_fail_every < 0:
            raise ValueError("MockConfig.token_fail_every must be >= 0")
        for name in ("token_lifetime", "latency", "latency_jitter", "slow_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"MockConfig.{name} must be >= 0")
        if self.token_latency < 0:
            raise ValueError("MockConfig.token_latency must be >= 0")

    @property
    def any_faults(self) -> bool:
        return bool(self.fail_500 or self.fail_503 or self.fail_429 or self.drop or self.slow)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    path: str
    query: tuple[tuple[str, str], ...]
    raw_query: str
    headers: dict[str, str]
    received_at: float


class TokenCheck(Enum):
    OK = "ok"
    EXPIRED = "expired"
    INVALID = "invalid"


@dataclass(slots=True, eq=False)
class MockState:
    config: MockConfig = field(default_factory=MockConfig)
    delivery_requests: int = 0
    token_requests: int = 0
    token_failures: int = 0
    tokens_issued: int = 0
    unauthorized: int = 0
    expired_token_uses: int = 0
    status_counts: Counter[int] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)
    requests: list[RecordedRequest] = field(default_factory=list)
    token_request_times: list[float] = field(default_factory=list)
    # token -> monotonic expiry; expired tokens are kept so their use is counted.
    _tokens: dict[str, float] = field(default_factory=dict, repr=False)
    _static: frozenset[str] = field(default=frozenset(), repr=False)
    _seen_queries: set[str] = field(default_factory=set, repr=False)
    _fault_rng: random.Random = field(default_factory=random.Random, repr=False)
    _jitter_rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._static = frozenset(self.config.static_tokens)
        self._fault_rng = random.Random(self.config.seed)
        self._jitter_rng = random.Random(self.config.seed + 1)

    @property
    def issued_tokens(self) -> int:
        """Tokens issued by the token endpoint and not revoked (expired ones included)."""
        return len(self._tokens)

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + self.config.token_lifetime
        self.tokens_issued += 1
        return token

    def check_token(self, token: str) -> TokenCheck:
        if token in self._static:
            return TokenCheck.OK
        expiry = self._tokens.get(token)
        if expiry is None:
            return TokenCheck.INVALID
        return TokenCheck.OK if time.monotonic() < expiry else TokenCheck.EXPIRED

    def revoke_all_tokens(self) -> None:
        """Reject every token issued so far and the static tokens, from now on."""
        self._tokens.clear()
        self._static = frozenset()

    def draw_fault(self, raw_query: str) -> str | None:
        """The fault to inject for this request, if any (``None`` for a normal answer)."""
        config = self.config
        if config.faults_first_attempt_only:
            if raw_query in self._seen_queries:
                return None
            self._seen_queries.add(raw_query)
        r = self._fault_rng.random()
        for name, p in (
            ("drop", config.drop),
            ("fail_500", config.fail_500),
            ("fail_503", config.fail_503),
            ("fail_429", config.fail_429),
            ("slow", config.slow),
        ):
            if r < p:
                return name
            r -= p
        return None

    def delay(self) -> float:
        """Seconds to hold a delivery answer (latency plus uniform jitter)."""
        config = self.config
        if config.latency_jitter:
            return config.latency + self._jitter_rng.uniform(0.0, config.latency_jitter)
        return config.latency
