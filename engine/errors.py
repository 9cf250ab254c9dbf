"""One exception tree for the engine.

    EngineError
     +-- ConfigError(ValueError)   bad options or config file: exit code 2
     +-- InputError(OSError)       an input cannot be opened: exit code 2
     +-- FatalError                the run cannot go on (auth refused, ...): exit code 3
          +-- AuthError

Per-event failures are never exceptions: they become result records.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    exit_code = 1


class ConfigError(EngineError, ValueError):
    """An option, an environment variable or the config file is wrong."""

    exit_code = 2


class InputError(EngineError, OSError):
    """An input file cannot be opened."""

    exit_code = 2


class FatalError(EngineError):
    """The run cannot go on; what was answered so far is in the output."""

    exit_code = 3


class AuthError(FatalError):
    """Credentials or a token were refused."""
