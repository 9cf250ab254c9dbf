"""One grammar for quantities (pure): durations, rates and sizes, wherever they are written.

Options, ADBATCH_* variables, the TOML config file and `--stages` all read quantities
through these three parsers, so `2s` means the same everywhere.

- Duration, in seconds: a bare number is seconds; otherwise NUMBER UNIT parts written
  together, units `ms`, `s`, `m`, `h`: `2`, `2s`, `500ms`, `1m30s`, `1h`, `1.5h`.
- Rate, in calls per second: NUMBER, an optional SI multiplier `k` (1000) or `M`
  (1000000), an optional `/s`, `/m` or `/h`: `500`, `500/s`, `30000/m`, `1k`, `1.5k/s`.
  A lowercase `m` is never a multiplier (it reads as minutes).
- Size, in bytes: NUMBER, an optional multiplier, an optional `B`. SI multipliers are
  powers of 1000 (`k` or `K`, `M`, `G`): `512k` is 512000 bytes, as k6 and vegeta count;
  IEC ones are powers of 1024 (`Ki`, `Mi`, `Gi`): `8MiB` is 8388608 bytes.

Every value is finite and >= 0; callers that need more (> 0, >= 1) check it themselves.
A bad text raises UnitError (a ConfigError) saying what was expected, with examples, and
what was given; callers put the option's name in front.
"""

from __future__ import annotations

import math
import re

from engine.core.errors import ConfigError
from engine.core.shown import quoted

DURATION_EXAMPLES = "2, 2s, 500ms, 1m30s, 1h"
RATE_EXAMPLES = "500, 500/s, 30000/m, 1k, 1.5k/s"
SIZE_EXAMPLES = "1048576, 512k (SI: 512000), 8MiB (IEC: 8388608)"


class UnitError(ConfigError):
    """A quantity that does not follow the grammar (exit 2 where it reaches the user)."""


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(rf"({_NUMBER})\s*([kKM]?)\s*(?:/\s*([A-Za-z]+))?")
_RATE_MULTIPLIERS = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6}
_PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_SIZE = re.compile(rf"({_NUMBER})\s*([kKMGT]i?)?[bB]?")
_SIZE_MULTIPLIERS = {
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def _bare(text: str) -> float | None:
    """A plain decimal number (no sign, no inf/nan), or None."""
    if re.fullmatch(_NUMBER, text) is None:
        return None
    return float(text)


def _given(text: object) -> str:
    return quoted(text) if isinstance(text, str) else str(text)  # no `u:pw@h` in clear


def parse_duration(text: str) -> float:
    """`2`, `2s`, `500ms`, `1m30s`, `1h` -> seconds (float, >= 0)."""
    s = text.strip().lower()
    bare = _bare(s)
    if bare is not None and math.isfinite(bare):  # 400 digits read as inf: refused below
        return bare
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _SECONDS[match.group(2)]
        pos = match.end()
    if not s or pos != len(s) or not math.isfinite(total):
        raise UnitError(f"expected a duration such as {DURATION_EXAMPLES}, got {_given(text)}")
    return total


def parse_rate(text: str) -> float:
    """`500`, `500/s`, `30000/m`, `1k`, `1.5k/s` -> calls per second (float, >= 0)."""
    match = _RATE.fullmatch(text.strip())
    per = match.group(3).lower() if match and match.group(3) else None
    if match is None or (per is not None and per not in _PER):
        raise UnitError(f"expected a rate such as {RATE_EXAMPLES}, got {_given(text)}")
    value = float(match.group(1)) * _RATE_MULTIPLIERS[match.group(2)]
    value /= _PER[per or "s"]
    if not math.isfinite(value):
        raise UnitError(f"expected a rate such as {RATE_EXAMPLES}, got {_given(text)}")
    return value


def parse_size(text: str) -> int:
    """`1048576`, `512k`, `8MiB`, `1.5M` -> bytes (a whole number, >= 0)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UnitError(f"expected a size such as {SIZE_EXAMPLES}, got {_given(text)}")
    number = match.group(1)
    multiplier = _SIZE_MULTIPLIERS[match.group(2)] if match.group(2) else 1
    value = float(number) * multiplier
    if not math.isfinite(value) or value != math.floor(value):
        raise UnitError(f"expected a whole number of bytes, got {_given(text)}")
    if "." not in number:  # exact for big integers, where a float would round
        return int(number) * multiplier
    return int(value)
