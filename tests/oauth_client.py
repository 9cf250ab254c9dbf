"""A small OAuth2 client-credentials provider against the mock's token endpoint.

For the distributed tests, which need a provider that really asks for tokens (the
engine's own is engine/net/auth.py). Imported by name by Ray workers too (not a test module).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp

import engine
from engine.net.auth import Lease, TokenProvider


class ClientCredentials:
    """Fetches a token at start and again after a 401 with the current one."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url
        self._header: str | None = None

    async def fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": "mock-client",
            "client_secret": "mock-secret",
        }
        async with self._session.post(self._url, data=form) as resp:
            resp.raise_for_status()
            self._header = "Bearer " + (await resp.json())["access_token"]

    def authorization(self) -> str | None:
        return self._header

    async def refresh_after_401(self, used: str | None) -> bool:
        if used == self._header:
            await self.fetch()
        return True

    async def wait_authorization(self) -> str | None:
        return self._header

    def lease(self) -> Lease:
        return Lease(self._header)  # no known lifetime: until a 401

    async def maintain(self) -> None:
        return None  # renews only after a 401

    def secrets(self) -> tuple[str, ...]:
        return () if self._header is None else (self._header[7:],)

    def token_stats(self) -> None:
        return None


@contextlib.asynccontextmanager
async def oauth_tokens(url: str, config: engine.Config) -> AsyncIterator[TokenProvider]:
    """A `TokenFactory` once bound to the token URL (functools.partial)."""
    async with aiohttp.ClientSession() as session:
        provider = ClientCredentials(session, url)
        await provider.fetch()
        yield provider
