"""One exception tree for the engine.

    EngineError
     +-- ConfigError(ValueError)   bad options or config file: exit code 2
     +-- InputError(OSError)       an input cannot be opened: exit code 2
     +-- FatalError                the run cannot go on (auth refused, ...): exit code 3
          +-- AuthError            credentials or a token were refused
          +-- OutputError(OSError) the output cannot be written

Per-event failures are never exceptions: they become result records.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


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


class OutputError(FatalError, OSError):
    """The output cannot be written (no permission, full disk, a reader that went away).

    Exit code 3 when a run could not go on; 2 (`before_run=True`) when the output could
    not even be opened, so nothing was sent. Inputs that cannot be read are InputError."""

    def __init__(self, message: str, *, before_run: bool = False, kept: bool = False) -> None:
        super().__init__(message)
        #: What the output holds so far stays (a write refused mid-run: a full disk), so
        #: the same command with --resume can finish it (core/stops.output_stop).
        self.kept = kept
        if before_run:
            self.exit_code = 2


def first_engine_error(group: BaseExceptionGroup[BaseException]) -> EngineError | None:
    """The first EngineError inside a (nested) exception group, if any."""
    for exc in group.exceptions:
        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_engine_error(exc)
            if found is not None:
                return found
    return None


@contextmanager
def plain_engine_errors() -> Iterator[None]:
    """Re-raise an EngineError that a task group wrapped in a group as itself, so the CLI
    prints its one line; any other group passes through untouched."""
    try:
        yield
    except BaseExceptionGroup as group:
        error = first_engine_error(group)
        if error is None:
            raise
        raise error from None
