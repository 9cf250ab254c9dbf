"""The chunked rate limiter: the run's rate holds, with one aiolimiter call per chunk."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from conftest import config_for, events
from web_app import arrivals_counted

from engine import run
from engine.core.rates import LeaseSchedule
from engine.runtime.limits import make_limiter

pytestmark = pytest.mark.anyio


def test_no_rate_no_limiter() -> None:
    assert make_limiter(None) is None


@pytest.mark.parametrize(
    ("rate", "calls"),
    [
        pytest.param(1000.0, 300, id="chunks-of-5"),
        pytest.param(150.0, 50, id="chunks-of-1"),
    ],
)
async def test_rate_holds_across_concurrent_callers(rate: float, calls: int) -> None:
    limiter = make_limiter(rate)
    assert limiter is not None
    done = 0

    async def caller(n: int) -> None:
        nonlocal done
        for _ in range(n):
            await limiter.acquire()
            done += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(caller, calls // 10)
    elapsed = time.perf_counter() - start
    assert done == calls
    # `calls` at `rate` need (calls - one chunk) / rate seconds at least; generous upper
    # bound only to catch a limiter that stalls (CI machines are slow and shared).
    floor = (calls - max(1, int(rate * 0.005))) / rate
    assert floor * 0.9 <= elapsed < floor * 10 + 2


@pytest.mark.parametrize(
    ("slack", "asks", "next_slot"),
    [
        pytest.param(0.0, [0.0, 0.101], 0.201, id="no-slack-late-call-shifts-schedule"),
        pytest.param(0.02, [0.0, 0.101], 0.2, id="late-call-keeps-its-slot"),
        pytest.param(0.02, [0.0, 3.0], 3.1, id="idle-time-not-saved-beyond-slack"),
    ],
)
def test_lease_slack_makes_up_lateness(slack: float, asks: list[float], next_slot: float) -> None:
    """At 10/s, a permit asked 1 ms late: without slack the schedule restarts from `now`
    (every late wake-up is lost: run --rate ran under), with it the next slot stays 0.2."""
    schedule = LeaseSchedule(10.0, slack=slack)
    got = [schedule.grant(now, 1) for now in asks]
    assert got == pytest.approx(asks)  # a permit is never granted before it is asked
    assert schedule.next_at == pytest.approx(next_slot)


@pytest.mark.parametrize(
    ("origin", "asks", "granted"),
    [
        pytest.param(0.25, [0.0, 0.0], [0.25, 1.25], id="first-slot-waits-for-the-origin"),
        pytest.param(0.25, [1.0, 1.0], [1.25, 2.25], id="starts-on-the-grid-not-at-now"),
        pytest.param(0.25, [1.26, 1.3], [1.26, 2.25], id="a-slot-missed-within-slack-kept"),
        pytest.param(0.25, [1.3, 5.0], [2.25, 5.25], id="idle-restarts-on-the-grid"),
        pytest.param(None, [1.3, 5.0], [1.3, 5.0], id="no-origin-restarts-at-now"),
    ],
)
def test_lease_on_a_grid(origin: float | None, asks: list[float], granted: list[float]) -> None:
    """At 1/s with a grid from 0.25 (worker 1 of 4 from the run's origin 0): the leases
    stay on 0.25 + k, at start and after an idle moment, so the other workers' slots
    (0, 0.5, 0.75 + k) stay between them."""
    schedule = LeaseSchedule(1.0, slack=0.02, origin=origin)
    assert [schedule.grant(now, 1) for now in asks] == pytest.approx(granted)


@pytest.mark.slow
async def test_workers_calls_interleave(write_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    """--rate 10 --workers 4: one call every 0.1 s at the server, not the four workers'
    calls together (each paced at 10/4 from the same moment: 4 calls within 11 ms, then
    nothing for 0.4 s). The workers' arrivals are counted in every window of half a
    slot: at most 3 in any of them (4 before) leaves room for a busy machine's lateness."""
    count, rate = 16, 10.0
    path = write_jsonl(events(count))
    async with arrivals_counted() as (url, arrivals):
        config = config_for(url, path, tmp_path / "out.jsonl", workers=4, rate=rate)
        summary = await run(config)
    assert summary.ok == count == len(arrivals)
    window = 0.5 / rate
    most = max(sum(1 for t in arrivals if start <= t < start + window) for start in arrivals)
    assert most <= 3, [round(t - arrivals[0], 3) for t in arrivals]
