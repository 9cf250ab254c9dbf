"""The seam between a running run and its observers (--metrics-addr, --dashboard).

Rules:
- The driver of a run (`run`, the --workers parent, `load`/`replay`) `attach`es a probe:
  a plain function that reads the figures the run keeps anyway and returns a `Snapshot`
  (core/tally.py). Observers call `snapshot()` at their own pace (a scrape, the
  dashboard's second); nothing is added to the per-call path.
- A probe is cheap (a copy of counters and histograms) and never awaits; it runs on the
  run's event loop, in the process that serves.
- Before a probe is attached (the run is still starting) the snapshot is an empty one.
- The driver's caller tells `ended` how the run ended: a run stopped (exit 3, 70) or
  interrupted (SIGINT, SIGTERM) is not lingered on (--metrics-linger), as one that raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.core.events import ReadCounts
from engine.core.query import Request
from engine.core.records import Response
from engine.core.stats import Histogram, Summary
from engine.core.tally import Mode, Progress, Snapshot, Tally, TokenView, input_share, tally_of
from engine.files.sources import input_size
from engine.net.auth import TokenProvider
from engine.net.transport import Transport
from engine.runtime.engine import Engine

Probe = Callable[[float], Snapshot]  # elapsed seconds -> the run's figures now


class Watch:
    """One run's live figures, for the observers of this process."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.started = time.monotonic()
        self.finished = False
        self.lingers = True  # False once `ended` hears of a stop or a signal
        self._probe: Probe | None = None

    def attach(self, probe: Probe) -> None:
        """The run has started: its figures come from `probe` from now on."""
        self._probe = probe
        self.started = time.monotonic()

    def ended(self, summary: Summary) -> None:
        """The run is over, as `summary` tells: a failed or interrupted one is not waited on."""
        self.lingers = summary.stopped is None and summary.interrupted is None

    def snapshot(self) -> Snapshot:
        elapsed = time.monotonic() - self.started
        if self._probe is None:
            return Snapshot(self.mode, elapsed, Tally(), finished=self.finished)
        snap = self._probe(elapsed)
        return snap if not self.finished else _finished(snap)


def _finished(snap: Snapshot) -> Snapshot:
    return Snapshot(
        snap.mode,
        snap.elapsed,
        snap.tally,
        0,
        snap.target_rate,
        snap.token,
        snap.progress,
        finished=True,
    )


class _Counted:
    """A transport that counts its calls in flight: only a watched run pays for it."""

    __slots__ = ("in_flight", "transport")

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.in_flight = 0

    async def send(self, request: Request, authorization: str | None) -> Response:
        self.in_flight += 1
        try:
            return await self.transport.send(request, authorization)
        finally:
            self.in_flight -= 1


def count_in_flight(engine: Engine) -> Callable[[], int]:
    """Count `engine`'s calls in flight from now on (its transport wrapped); the count."""
    if engine.transport is None:  # --dry-run: nothing is sent
        return lambda: 0
    counted = _Counted(engine.transport)
    engine.transport = counted
    return lambda: counted.in_flight


def token_view(tokens: TokenProvider) -> TokenView:
    """The token's state as the observers show it."""
    lease = tokens.lease()
    stats = tokens.token_stats()
    if stats is None:
        return TokenView("static" if lease.header is not None else "none", failed=lease.failed)
    return TokenView(
        "dynamic",
        ttl=lease.ttl if lease.header is not None else None,
        failed=lease.failed,
        fetched=stats.fetched,
        renewals=stats.renewals,
        failures=stats.failures,
        waits=stats.waits,
    )


ProgressOf = Callable[[int, int], Progress | None]  # (records read, calls done) -> progress


def input_progress(counts: ReadCounts, inputs: tuple[str, ...]) -> ProgressOf:
    """How much of the input is answered, by bytes (compressed bytes for gzip), when every
    input is a regular file; else nothing (stdin, a pipe: the size is unknown). The
    records read ahead and not answered yet do not count as done; the bytes a shard never
    reads (`ReadCounts.bytes_skipped`) are not in the total (`input_share`, as the
    terminal's bar)."""
    total = input_size(inputs)
    if total is None:
        return lambda read, done: None

    def progress(read: int, done: int) -> Progress:
        return input_share(counts, total, read, done)

    return progress


def engine_probe(
    engine: Engine,
    *,
    mode: Mode = "run",
    tokens: TokenProvider | None = None,
    progress: ProgressOf = lambda read, done: None,
    target_rate: Callable[[float], float | None] | None = None,
    corrected: Histogram | None = None,
    lag: Histogram | None = None,
    scheduled: Callable[[], int] = lambda: 0,
    events_read: Callable[[], int] | None = None,
    in_flight: Callable[[], int] | None = None,
) -> Probe:
    """The probe of a run driven by `engine` in this process (`run`, `load`, `replay`).

    `tokens`: the provider whose renewals count (default: the engine's). `target_rate`:
    the rate asked for at an elapsed time (default: --rate). `corrected`, `lag`: the
    load driver's histograms of latency from the schedule and of schedule lag.
    `events_read`: input records taken so far (default: those the engine's feed gave).
    Its calls in flight are counted from now on (`count_in_flight`) unless `in_flight`
    says how many there are."""
    provider = tokens if tokens is not None else engine.tokens
    flying = in_flight if in_flight is not None else count_in_flight(engine)
    rate = engine.config.rate

    def probe(elapsed: float) -> Snapshot:
        state = engine.state
        renewals = provider.token_stats()
        tally = tally_of(
            state.stats,
            corrected=corrected,
            lag=lag,
            token_renewals=0 if renewals is None else renewals.renewals,
            events_read=engine.taken if events_read is None else events_read(),
            scheduled=scheduled(),
        )
        return Snapshot(
            mode,
            elapsed,
            tally,
            in_flight=flying(),
            target_rate=rate if target_rate is None else target_rate(elapsed),
            token=token_view(provider),
            progress=progress(tally.events_read, tally.done),
        )

    return probe
