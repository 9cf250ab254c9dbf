"""The chunked rate limiter: the run's rate holds, with one aiolimiter call per chunk."""

from __future__ import annotations

import time

import anyio
import pytest

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
