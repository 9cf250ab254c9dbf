"""Which issued tokens the redactor hunts, and for how long (pure).

Rules:
- A provider keeps a token while a call that carried it can still be answered and
  written: the current one, and each replaced one until `keep` seconds after it was
  replaced (`token_keep`: the call's --timeout, per attempt, plus `TOKEN_KEEP_MARGIN`;
  with --ordered, which holds an answer until the ones before it are written, the whole
  run). A replaced token is no longer sent, so an answer echoing it comes within that.
- The one exception: past `MAX_KEPT_TOKENS` kept tokens the oldest is dropped, so an
  answer written more than 1024 renewals after its token was replaced is not redacted
  of that token (with the shortest lifetime accepted, 0.5 s, that is a call held about 7
  minutes; with Criteo's 900 s tokens, 10 days).
- Each kept token is hunted in every write (engine/core/secrets.py), so the list does
  not grow with the run, one more token per renewal, as it once did.
"""

from __future__ import annotations

import math
from collections import deque

#: The most tokens a provider keeps for the redactor (module rules). With the shortest
#: lifetime accepted (0.5 s: a renewal every ~0.4 s) 1024 renewals take about 7 minutes.
MAX_KEPT_TOKENS = 1024
#: Seconds a replaced token is kept past the --timeout of the calls that carried it: a
#: call reads its token just before it is sent, a --workers child hears of a renewal
#: through a pipe, and an answer is written a little after it came (a batch, a busy loop).
TOKEN_KEEP_MARGIN = 30.0


def token_keep(timeout: float, *, ordered: bool = False) -> float:
    """Seconds a provider keeps a replaced token (module rules)."""
    return math.inf if ordered else timeout + TOKEN_KEEP_MARGIN


class KeptTokens:
    """The tokens a provider handed out that an answer may still echo (module rules):
    the current one, and the replaced ones for `keep` seconds after their replacement,
    at most `cap` in all. Time is the caller's clock's `now`, given as a number."""

    __slots__ = ("_cap", "_current", "_keep", "_replaced", "_texts")

    def __init__(self, *, keep: float = math.inf, cap: int = MAX_KEPT_TOKENS) -> None:
        self._keep = keep
        self._cap = max(1, cap)
        self._current: str | None = None
        self._replaced: deque[tuple[str, float]] = deque()  # (token, replaced at), oldest first
        self._texts: tuple[str, ...] = ()

    def add(self, token: str, now: float = 0.0) -> None:
        """`token` is the one handed out from `now` on (it replaces the current one)."""
        if token == self._current:
            return
        if self._current is not None:
            self._replaced.append((self._current, now))
        self._current = token
        self._drop(now)

    def texts(self, now: float = 0.0) -> tuple[str, ...]:
        """The tokens kept at `now`, oldest first; cheap, as it is asked at every write."""
        replaced = self._replaced
        if replaced and now - replaced[0][1] >= self._keep:
            self._drop(now)
        return self._texts

    def _drop(self, now: float) -> None:
        replaced = self._replaced
        while replaced and (len(replaced) >= self._cap or now - replaced[0][1] >= self._keep):
            replaced.popleft()
        current = () if self._current is None else (self._current,)
        self._texts = (*(token for token, _ in replaced), *current)
