"""The actors of a Ray run as the plain classes they are (engine/distributed/actors.py):
no Ray needed, real servers on 127.0.0.1."""

from __future__ import annotations

import pytest

import engine
from engine.distributed.actors import TokenActor
from engine.distributed.ray_backend import config_tokens
from engine.errors import AuthError
from engine.mock import MockHandle


@pytest.mark.anyio
async def test_the_token_actor_renewer_ends_quietly_when_no_token_comes(mock: MockHandle) -> None:
    """No one waits for `maintain` (the driver starts it and kills the actor at the
    end): raised, its AuthError was Ray's "Unhandled error" and a traceback on stderr.
    It ends quietly; the senders' calls still get the reason, which the driver reports."""
    config = engine.Config(
        endpoint=mock.delivery_url,
        token_url=mock.token_url,
        client_id="mock-client",
        client_secret="not-the-secret",
    )
    actor = TokenActor(config, config_tokens)
    try:
        assert await actor.maintain() is None
        with pytest.raises(AuthError, match="refused the client credentials"):
            await actor.authorization()
    finally:
        await actor.close()
