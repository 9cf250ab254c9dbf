"""Run counters updated a batch of records at a time (pure).

`add_results(stats, batch)` counts as `RunStats.add_result` does for each record (and
its retries), to the same figures; the common record (ok, answered, no retry) is
counted with local sums and one histogram call per batch, the others one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.core.records import Result
from engine.core.stats import RunStats


def add_results(stats: RunStats, batch: Sequence[Result]) -> None:
    """Count every record of `batch` into `stats` (see the module's rules)."""
    ok = attempts = 0
    latencies: list[float] = []
    statuses = stats.statuses
    retries = stats.retries
    for result in batch:
        if result.retries:
            for reason in result.retries:
                retries[reason] += 1
        status, latency = result.status, result.latency_ms
        if result.ok and result.error_kind is None and status is not None and latency is not None:
            ok += 1
            attempts += result.attempts
            statuses[status] += 1
            latencies.append(latency)
        else:
            stats.add_result(result)
    stats.events += ok
    stats.ok += ok
    stats.attempts += attempts
    stats.latency.record_all(latencies)
