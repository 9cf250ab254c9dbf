"""The one exception tree, as the package's users import it (defined in engine/core/errors.py,
where the pure layer can raise it too)."""

from engine.core.errors import (
    AuthError,
    ConfigError,
    EngineError,
    FatalError,
    InputError,
    OutputError,
    first_engine_error,
    plain_engine_errors,
)

__all__ = [
    "AuthError",
    "ConfigError",
    "EngineError",
    "FatalError",
    "InputError",
    "OutputError",
    "first_engine_error",
    "plain_engine_errors",
]
