"""`round(value, digits)` for the timings of a record, at a third of its cost (pure).

CPython's `round(x, n)` writes `x` out in decimal and reads it back (~0.37 µs); a record
rounds two timings. `rounded` scales instead, and returns the same float: below 2**51
the scaled product is within an eighth of a unit of the exact one (half its spacing,
which is at most a quarter there), so when it is more than an eighth away from a
half-way point (within 0.375 of an integer `k`), the exact product is nearer `k` than any
other integer: `k` is the one `round` picks, and `k / 10**n` is the float nearest to that
decimal, as `round` returns. Otherwise (near a half-way point, not positive, too large)
`round` decides. (A `sent_at` near 1.7e15 microseconds lies on a grid of quarters: a
margin of a quarter sent three in four of them to `round`.)
"""

from __future__ import annotations

_SCALES = (1.0, 10.0, 100.0, 1000.0, 1e4, 1e5, 1e6)
_EXACT = float(2**51)


def rounded(value: float, digits: int) -> float:
    """`round(value, digits)` (0 <= digits <= 6), the same float, cheaper."""
    scale = _SCALES[digits]
    scaled = value * scale
    if 0.0 < scaled < _EXACT:  # a timing; zero, a negative or NaN: `round` (its -0.0)
        k = round(scaled)
        if -0.375 < scaled - k < 0.375:
            return k / scale
    return round(value, digits)
