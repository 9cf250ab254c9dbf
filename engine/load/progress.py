"""Live progress of a load or replay on a terminal (rich when installed, else one line).

Rules:
- Shown only when stderr is a terminal (the CLI decides); never written to the output.
- Reads the live figures, never waits on the run: a refresh every half second.
- The text is built by `progress_text` (pure, tested); this module's only I/O is the
  terminal.
"""

from __future__ import annotations

import sys
import time

import anyio

from engine.load.plan import LiveState
from engine.runtime.progress import show_status

_REFRESH = 0.5


def progress_text(live: LiveState, *, now: float, rate: float) -> str:
    """One status line: done/total or time left, rate, p50/p99, errors, token state."""
    f = live.figures
    done = f.events
    elapsed = max(0.0, now - live.started)
    if live.duration is not None:
        where = (
            f"{elapsed:5.1f}s / {live.duration:g}s ({max(0.0, live.duration - elapsed):.0f}s left)"
        )
    elif live.total is not None:
        where = f"{done}/{live.total}"
    else:
        where = f"{elapsed:5.1f}s"
    latest = None
    timeline = f.timeline()
    if timeline is not None:
        points = timeline.points()
        # the last full second: the current one is still filling up
        latest = points[-2][1] if len(points) > 1 else points[-1][1]
    p50 = latest.latency.percentile(50) if latest is not None else None
    p99 = latest.corrected.percentile(99) if latest is not None else None
    lat = (
        "-" if p50 is None or p99 is None else f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (from schedule)"
    )
    return (
        f"{where} | {done} done, {rate:.0f}/s, {live.in_flight} in flight | {lat} | "
        f"{f.failed - f.dropped} errors, {f.dropped} dropped | token: {live.token}"
    )


async def show_progress(live: LiveState) -> None:
    """Refresh the progress display until cancelled."""
    try:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text
    except ImportError:  # rich is an optional extra: fall back to a plain line
        await _plain(live)
        return
    console = Console(file=sys.stderr)
    last_events, last_time = 0, time.monotonic()
    with Live(console=console, auto_refresh=False, transient=True) as display:
        while True:
            await anyio.sleep(_REFRESH)
            now = time.monotonic()
            events = live.figures.events
            rate = (events - last_events) / max(1e-9, now - last_time)
            last_events, last_time = events, now
            display.update(Text(progress_text(live, now=now, rate=rate)), refresh=True)


async def _plain(live: LiveState) -> None:
    last = [0, time.monotonic()]  # events and time at the last refresh

    def text(_elapsed: float) -> str:
        now = time.monotonic()
        events = live.figures.events
        rate = (events - last[0]) / max(1e-9, now - last[1])
        last[:] = [events, now]
        return progress_text(live, now=now, rate=rate)

    await show_status(text, every=_REFRESH)
