"""adbatch: a high-throughput batch engine for the Criteo Retail Media delivery API.

import anyio, engine

config = engine.Config(inputs=("events.jsonl",), output="ads.jsonl", mock=True)
summary = anyio.run(engine.run, config)

async for result in engine.deliver(events, config):   # events: dicts
    ...

The names below are loaded on first use: `import engine` alone loads neither aiohttp nor
anyio (the pure layer, `engine.core`, and the configuration can be used without them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.version import __version__

if TYPE_CHECKING:
    from engine.api import deliver, run, run_load
    from engine.config import Config
    from engine.core.events import Event, EventDefaults, Invalid, make_event
    from engine.core.records import Result
    from engine.core.stats import Summary
    from engine.errors import (
        AuthError,
        ConfigError,
        EngineError,
        FatalError,
        InputError,
        OutputError,
    )

#: public name -> the module that defines it
_EXPORTS = {
    "AuthError": "engine.errors",
    "Config": "engine.config",
    "ConfigError": "engine.errors",
    "EngineError": "engine.errors",
    "Event": "engine.core.events",
    "EventDefaults": "engine.core.events",
    "FatalError": "engine.errors",
    "InputError": "engine.errors",
    "Invalid": "engine.core.events",
    "OutputError": "engine.errors",
    "Result": "engine.core.records",
    "Summary": "engine.core.stats",
    "deliver": "engine.api",
    "make_event": "engine.core.events",
    "run": "engine.api",
    "run_load": "engine.api",
}

__all__ = [
    "AuthError",
    "Config",
    "ConfigError",
    "EngineError",
    "Event",
    "EventDefaults",
    "FatalError",
    "InputError",
    "Invalid",
    "OutputError",
    "Result",
    "Summary",
    "__version__",
    "deliver",
    "make_event",
    "run",
    "run_load",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
