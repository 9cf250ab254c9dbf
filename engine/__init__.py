"""adbatch: a high-throughput batch engine for the Criteo Retail Media delivery API.

import anyio, engine

config = engine.Config(inputs=("events.jsonl",), output="ads.jsonl", mock=True)
summary = anyio.run(engine.run, config)

async for result in engine.deliver(events, config):   # events: dicts
    ...
"""

from engine.config import Config
from engine.errors import AuthError, ConfigError, EngineError, FatalError, InputError
from engine.events import Event, EventDefaults, Invalid, make_event
from engine.results import Result
from engine.runner import deliver, run
from engine.stats import Summary

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
    "Result",
    "Summary",
    "deliver",
    "make_event",
    "run",
]
__version__ = "0.1.0"
