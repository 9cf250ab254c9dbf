"""Which delivery parameters the mock requires (pure).

The table is the engine's own (``engine.core.events``), so the client and the server
cannot drift apart; the messages are Criteo's ("Missing required parameter x").
Unknown event types get only the four always-required parameters checked.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.core.events import ALWAYS_REQUIRED, REQUIRED_BY_TYPE

__all__ = ["ALWAYS_REQUIRED", "REQUIRED_BY_TYPE", "problems"]


def problems(query: Mapping[str, str]) -> list[str]:
    """Error messages for ``query`` (first value per name); empty when valid.

    A parameter that is present but empty counts as missing.
    """
    required = ALWAYS_REQUIRED + REQUIRED_BY_TYPE.get(query.get("event-type", ""), ())
    messages = [f"Missing required parameter {name}" for name in required if not query.get(name)]
    partner = query.get("criteo-partner-id")
    if partner and not (partner.isascii() and partner.isdigit()):
        messages.append("Invalid parameter criteo-partner-id: expected an integer")
    return messages
