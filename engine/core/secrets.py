"""The secrets of a run and the one redactor (pure).

Rules:
- A run's secrets are gathered once, in one `Secrets`: the ones it was given (a static
  token, the client secret) and the tokens its token provider has issued so far. The
  issued ones are asked for at each use (`issued()`), so a token renewed mid-run is covered
  from the moment it exists.
- Every text or byte string that leaves the process (records, error messages, the
  summary) goes through `redact` / `redact_bytes`; each secret becomes `[redacted]`.
- Secrets shorter than `min_length` are not hunted in records: replacing them would mangle
  ordinary words. Token-endpoint messages use a `min_length` of 1 (the client secret,
  whatever its length, never reaches a message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

#: Shorter "secrets" are not hunted in records: replacing them would mangle ordinary words.
MIN_SECRET_LENGTH = 8
REDACTED = "[redacted]"
_REDACTED_BYTES = REDACTED.encode()


def _no_tokens() -> tuple[str, ...]:
    return ()


class Secrets:
    """What must never be written, and the redactor for it."""

    __slots__ = ("_encoded", "_given", "_issued", "_min_length")

    def __init__(
        self,
        given: Iterable[str | None] = (),
        *,
        issued: Callable[[], Iterable[str]] = _no_tokens,
        min_length: int = MIN_SECRET_LENGTH,
    ) -> None:
        self._min_length = min_length
        # Each secret once, however many names it goes by: every redaction scans for each.
        self._given = tuple(dict.fromkeys(s for s in given if s and len(s) >= min_length))
        self._issued = issued
        self._encoded: dict[str, bytes] = {}

    def texts(self) -> tuple[str, ...]:
        """Every secret to hunt now: the given ones, then the tokens issued so far."""
        given = self._given
        issued = [t for t in self._issued() if len(t) >= self._min_length and t not in given]
        return given + tuple(issued) if issued else given

    def redact(self, text: str) -> str:
        for secret in self.texts():
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        encoded = self._encoded
        for secret in self.texts():
            raw = encoded.get(secret)
            if raw is None:
                raw = encoded[secret] = secret.encode("utf-8", "surrogatepass")
            if raw in data:
                data = data.replace(raw, _REDACTED_BYTES)
        return data
