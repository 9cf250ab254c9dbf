"""Argument types: option text -> value, or argparse's one-line error saying what was expected.

The same functions type the ADBATCH_* variables and the config file's values
(engine/cli/config_file.py), so an option reads the same from all three. Quantities go
through engine/core/units.py: durations (`2s`, `500ms`, `1m30s`), rates (`500/s`, `1k`)
and sizes (`512k` = 512000 bytes, SI; `8MiB` = 8388608, IEC).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn, TypeVar

from engine.core.errors import ConfigError
from engine.core.shard import parse_shard
from engine.core.shown import quoted
from engine.core.units import (
    DURATION_EXAMPLES,
    RATE_EXAMPLES,
    UnitError,
    parse_duration,
    parse_rate,
    parse_size,
)
from engine.core.urls import parse_option

T = TypeVar("T", int, float)
Q = TypeVar("Q", int, float)


def _number(text: str, kind: type[T], what: str) -> T:
    """`text` as an int or float; argparse's one-line error naming `what` when it is not."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {quoted(text)}") from None


def _refuse(message: str) -> NoReturn:
    raise argparse.ArgumentTypeError(message)


def _quantity(parse: Callable[[str], Q], text: str) -> Q:
    try:
        return parse(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        _refuse(f"expected at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not (value > 0 and math.isfinite(value)):
        _refuse(f"expected a positive number, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not (value >= 0 and math.isfinite(value)):
        _refuse(f"expected 0 or more, got {text}")
    return value


def count(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 0:
        _refuse(f"expected 0 or more, got {value}")
    return value


def duration(text: str) -> float:
    """Seconds, >= 0: `2`, `2s`, `500ms`, `1m30s`, `1h`."""
    return _quantity(parse_duration, text)


#: Older name of `duration`.
seconds = duration


def positive_duration(text: str) -> float:
    """Seconds, > 0: `2`, `2s`, `500ms`, `1m30s`, `1h`."""
    value = _quantity(parse_duration, text)
    if value <= 0:
        _refuse(f"expected a duration above 0 such as {DURATION_EXAMPLES}, got {text!r}")
    return value


def rate(text: str) -> float:
    """Calls per second, > 0: `500`, `500/s`, `30000/m`, `1k`, `1.5k/s`."""
    value = _quantity(parse_rate, text)
    if value <= 0:
        _refuse(f"expected a rate above 0 such as {RATE_EXAMPLES}, got {text!r}")
    return value


def nonneg_rate(text: str) -> float:
    """Calls per second, >= 0 (a ramp may start or end at 0)."""
    return _quantity(parse_rate, text)


def size(text: str) -> int:
    """Bytes, >= 1: `1048576`, `512k` (SI, 512000), `8MiB` (IEC, 8388608)."""
    value = _quantity(parse_size, text)
    if value < 1:
        _refuse(f"expected a size of at least 1 byte, got {text!r}")
    return value


def part_size(text: str) -> int:
    """--part-size: bytes, at least 1 KiB (the same words as Config's check)."""
    value = _quantity(parse_size, text)
    if value < 1024:
        _refuse(f"expected a size of at least 1 KiB (1024 bytes), got {text!r}")
    return value


def shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def workers(text: str) -> int:
    if text == "auto":
        return _auto_workers()
    return positive_int(text)


def _auto_workers() -> int:
    # Lazy: the multiprocessing machinery is loaded only when --workers auto asks for it.
    from engine.multiproc.driver import auto_workers

    return auto_workers()


def storage_option(text: str) -> tuple[str, str]:
    """`--storage-option KEY=VALUE` -> (key, value) (the value is never echoed)."""
    try:
        return parse_option(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--storage-option ")) from None
