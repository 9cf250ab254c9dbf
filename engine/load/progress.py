"""What the live display of a load test or a replay says; runtime/display.py draws it.

Rules:
- Three rows: where the schedule is (elapsed / duration, or calls / total, as a bar);
  the achieved rate against the schedule's target and the last full second's latency
  from the schedule (coordinated omission corrected); errors, dropped calls and the
  token's state.
- The rows are built by `load_rows` (pure, tested); `LoadView` only reads the clock,
  the live figures and the token provider.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from engine.core.pacing import Pacer, RatePacer
from engine.core.stats import Histogram
from engine.load.plan import LiveState
from engine.net.auth import TokenProvider
from engine.runtime.display import Bar, RateMeter, Row, count, show_live, span
from engine.runtime.progress import token_state


def target_rate(pacer: Pacer | None, elapsed: float) -> float | None:
    """The rate the schedule asks for `elapsed` seconds in (None: no rate schedule)."""
    if not isinstance(pacer, RatePacer):
        return None
    start = 0.0
    for seg in pacer.segments:
        if elapsed < start + seg.duration:
            into = elapsed - start
            return seg.start + (seg.end - seg.start) * into / seg.duration
        start += seg.duration
    return 0.0  # past the end


def _errors(live: LiveState) -> str:
    f = live.figures
    kinds = [(k, n) for k, n in f.errors.most_common(3) if k != "dropped"][:2]
    text = f"{count(f.failed - f.dropped)} errors"
    if kinds:
        text += " (" + ", ".join(f"{k} {count(n)}" for k, n in kinds) + ")"
    return text


def load_rows(
    live: LiveState,
    *,
    elapsed: float,
    rate: float,
    target: float | None,
    token: str,
    last_second: Histogram | None = None,
) -> list[Row]:
    """The display's rows `elapsed` seconds into the schedule. `last_second`: the last
    second's latencies from the schedule, when `live` has no per-second series (the
    --workers parent's: summed.py)."""
    f = live.figures
    if live.duration is not None:
        left = max(0.0, live.duration - elapsed)
        where: Row = Bar(
            elapsed / live.duration if live.duration else 1.0,
            f"{span(elapsed)} / {span(live.duration)}, {span(left)} left",
        )
    elif live.total:
        where = Bar(f.events / live.total, f"{count(f.events)} / {count(live.total)} calls")
    else:
        where = f"{span(elapsed)} elapsed"
    achieved = f"{rate:,.0f}/s" + ("" if target is None else f" of {target:,.0f}/s target")
    latest = last_second
    timeline = f.timeline() if latest is None else None
    if timeline is not None:
        points = timeline.points()
        # the last full second: the current one is still filling up
        latest = (points[-2][1] if len(points) > 1 else points[-1][1]).corrected
    p50 = latest.percentile(50) if latest is not None else None
    p99 = latest.percentile(99) if latest is not None else None
    lat = "p50 -" if p50 is None or p99 is None else f"p50 {p50:,.1f} ms, p99 {p99:,.1f} ms"
    return [
        where,
        f"{achieved} · {count(f.events)} done · {live.in_flight} in flight · last s {lat}",
        f"{_errors(live)} · {count(f.dropped)} dropped · token {token}",
    ]


class LoadView:
    """`view(elapsed)` as display.show_live calls it, for a load test or a replay."""

    def __init__(self, live: LiveState, tokens: TokenProvider, pacer: Pacer | None) -> None:
        self.live = live
        self.tokens = tokens
        self.pacer = pacer
        self.meter = RateMeter()

    def __call__(self, _shown: float) -> Sequence[Row]:
        live = self.live
        now = time.monotonic()
        elapsed = max(0.0, now - live.started) if live.started else 0.0
        sent = live.scheduled - live.figures.dropped
        return load_rows(
            live,
            elapsed=elapsed,
            rate=self.meter.rate(now, sent),
            target=target_rate(self.pacer, elapsed),
            token=token_state(self.tokens),
        )


async def show_progress(live: LiveState, tokens: TokenProvider, pacer: Pacer | None) -> None:
    """Refresh the display until cancelled."""
    await show_live(LoadView(live, tokens, pacer))
