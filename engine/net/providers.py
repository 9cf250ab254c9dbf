"""The run's token provider: a static token, or client credentials (OAuth2).

Only a run with client credentials loads the token client (and aiohttp with it).
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from engine.config import Config
from engine.core.kept import token_keep
from engine.net.auth import StaticToken, TokenProvider
from engine.net.proxy import run_proxies
from engine.net.tls import tls_context


async def open_token_provider(config: Config, stack: AsyncExitStack) -> TokenProvider:
    """The run's token provider; a dynamic one has its first token before any call.

    Raises AuthError (exit 3) when the credentials are refused, or when the endpoint
    gave no token within `config.token_wait`.
    """
    if not config.dynamic_tokens:
        return StaticToken(config.token)
    if config.dry_run:  # sends nothing, asks for nothing; shows "Bearer [redacted]"
        return StaticToken("[dynamic]")
    assert config.client_id is not None
    assert config.client_secret is not None
    from engine.net.oauth import OAuthToken  # (here: a static token's run never loads it)
    from engine.net.token_client import TOKEN_MAX_BYTES, TokenClient  # aiohttp loads now

    client = await stack.enter_async_context(
        TokenClient(
            config.token_url,
            client_id=config.client_id,
            client_secret=config.client_secret,
            max_bytes=min(config.max_response_bytes, TOKEN_MAX_BYTES),
            tls=tls_context(config),
            proxies=run_proxies(config),
        )
    )
    keep = token_keep(config.timeout, ordered=config.ordered)  # core/kept.py's rule
    provider = OAuthToken(client, wait=config.token_wait, keep=keep)
    await provider.start()
    return provider
