"""Token providers: what goes in the Authorization header of a delivery call.

A call reads the current header value without awaiting (`authorization()`); only a 401
makes a call wait, in `refresh_after_401`, and only when a new token can help.
"""

from __future__ import annotations

from typing import Protocol


class TokenProvider(Protocol):
    """Holds the current bearer token of a run."""

    def authorization(self) -> str | None:
        """The current `Authorization` header value (no await, no I/O)."""
        ...

    async def refresh_after_401(self, used: str | None) -> bool:
        """A call sent with `used` got a 401: True when a retry with a new token may help."""
        ...


class StaticToken:
    """A token issued once by Criteo; a 401 cannot be mended by asking again."""

    __slots__ = ("_header",)

    def __init__(self, token: str | None) -> None:
        self._header = None if token is None else f"Bearer {token}"

    def authorization(self) -> str | None:
        return self._header

    async def refresh_after_401(self, used: str | None) -> bool:
        return False

    def secrets(self) -> tuple[str, ...]:
        return () if self._header is None else (self._header[7:],)
