"""The live progress line (pure text; the terminal part is rich's)."""

from __future__ import annotations

import pytest

from engine.load.plan import LiveState
from engine.load.progress import progress_text


def live_with(calls: int, *, duration: float | None = None, total: int | None = None) -> LiveState:
    live = LiveState(duration=duration, total=total, started=100.0, token="mock token")
    live.figures.origin = 1000.0
    for i in range(calls):
        live.figures.add(
            status=200 if i % 10 else 503, ok=bool(i % 10),
            error_kind=None if i % 10 else "http_503", latency_ms=5.0 + i % 3,
            sent_at=1000.0 + i / 50, scheduled_at=1000.0 + i / 50,
        )  # fmt: skip
    live.figures.add(status=None, ok=False, error_kind="dropped", latency_ms=None,
                     sent_at=None, scheduled_at=1000.5)  # fmt: skip
    live.in_flight = 3
    return live


@pytest.mark.parametrize(
    ("live", "parts"),
    [
        pytest.param(
            live_with(100, duration=10),
            ["2.0s / 10s (8s left)", "101 done", "48/s", "3 in flight", "10 errors, 1 dropped",
             "token: mock token", "p50 6.0 ms"],
            id="duration",
        ),
        pytest.param(live_with(20, total=600), ["21/600", "2 errors, 1 dropped"], id="total"),
        pytest.param(live_with(0), ["2.0s |", "| - |", "0 errors, 1 dropped"], id="no-latency"),
    ],
)  # fmt: skip
def test_progress_text(live: LiveState, parts: list[str]) -> None:
    text = progress_text(live, now=102.0, rate=48.0)
    for part in parts:
        assert part in text
