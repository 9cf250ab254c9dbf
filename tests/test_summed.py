"""What the parent of load/replay --workers N reads of its workers' figures (pure parts):
core/tally.record_schedule (a worker counts its scheduled calls from its records) and
load/summed.figures_of (the summed counters as load's display reads them)."""

from __future__ import annotations

from collections import Counter

from engine.core.records import Result
from engine.core.tally import Tally, record_schedule
from engine.load.summed import figures_of


def result(
    *,
    scheduled_at: float | None,
    sent_at: float | None,
    latency_ms: float | None,
    kind: str | None = None,
) -> Result:
    ok = kind is None
    return Result(
        0, None, "f:1", 200 if ok else None, ok, 1, latency_ms, sent_at, None, None,
        error_kind=kind, scheduled_at=scheduled_at,
    )  # fmt: skip


def test_record_schedule_counts_due_calls_lag_and_latency_from_the_schedule() -> None:
    tally = Tally()
    record_schedule(
        tally,
        [
            result(scheduled_at=100.0, sent_at=100.02, latency_ms=5.0),  # 20 ms late
            result(scheduled_at=100.0, sent_at=99.999, latency_ms=3.0),  # early: lag 0
            result(scheduled_at=100.0, sent_at=None, latency_ms=None, kind="dropped"),
            result(scheduled_at=None, sent_at=None, latency_ms=None, kind="invalid"),
        ],
    )
    assert tally.scheduled == 3  # the dropped call came due; the invalid line did not
    assert tally.lag.count == 2
    assert tally.corrected.count == 2
    assert 19.0 <= tally.lag.max <= 21.0
    assert tally.lag.min == 0.0
    assert 24.0 <= tally.corrected.max <= 26.0
    assert 2.9 <= tally.corrected.min <= 3.1


def test_figures_of_a_summed_tally() -> None:
    tally = Tally(
        calls=Counter(
            {("200", ""): 7, ("503", "http_503"): 2, ("", "dropped"): 3, ("", "invalid"): 1}
        )
    )
    f = figures_of(tally)
    assert (f.events, f.ok, f.failed, f.dropped, f.invalid) == (13, 7, 5, 3, 1)
    assert f.errors == Counter({"http_503": 2, "dropped": 3})
