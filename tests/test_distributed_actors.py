"""The Ray run's rate and token actors as plain objects (no Ray needed)."""

from __future__ import annotations

import functools

import anyio
import pytest
from oauth_client import oauth_tokens

import engine
from engine.distributed.actors import LeaseSchedule, TokenActor
from engine.mock import MockHandle


@pytest.mark.parametrize(
    ("rate", "asks", "expected"),
    [
        pytest.param(10.0, [(0.0, 1), (0.0, 1), (0.0, 1)], [0.0, 0.1, 0.2], id="queued"),
        pytest.param(10.0, [(0.0, 5), (0.0, 5)], [0.0, 0.5], id="a lease of 5 holds 0.5 s"),
        pytest.param(10.0, [(0.0, 1), (3.0, 1)], [0.0, 3.0], id="idle time is not saved up"),
        pytest.param(100.0, [(1.0, 2), (1.005, 2), (1.05, 1)], [1.0, 1.02, 1.05], id="catch-up"),
    ],
)
def test_lease_schedule(rate: float, asks: list[tuple[float, int]], expected: list[float]) -> None:
    schedule = LeaseSchedule(rate)
    got = [schedule.grant(now, n) for now, n in asks]
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("lease", [1, 3, 20])
def test_lease_schedule_holds_the_rate_in_every_window(lease: int) -> None:
    """Many senders asking at once: no 1-second window gets more than rate + one lease."""
    rate = 200.0
    schedule = LeaseSchedule(rate)
    grants: list[tuple[float, int]] = []
    now = 0.0
    for step in range(2000):  # 8 senders, each asking again as soon as it is granted
        now = max(now, grants[-8][0] if len(grants) >= 8 else 0.0)
        grants.append((schedule.grant(now + (step % 8) * 1e-4, lease), lease))
    for start, _ in grants:
        in_window = sum(n for at, n in grants if start <= at < start + 1.0)
        assert in_window <= rate + lease


@pytest.mark.anyio
async def test_token_actor_renews_once_for_a_burst_of_401s(mock: MockHandle) -> None:
    config = engine.Config(endpoint=mock.delivery_url, dry_run=True)
    actor = TokenActor(config, functools.partial(oauth_tokens, mock.token_url))
    first = await actor.authorization()
    assert first is not None
    assert mock.state.token_requests == 1
    answers: list[tuple[bool, str | None]] = []

    async def refused() -> None:
        answers.append(await actor.refresh_after_401(first))

    async with anyio.create_task_group() as tg:
        for _ in range(20):  # every sender's calls in flight met a 401 at once
            tg.start_soon(refused)
    assert mock.state.token_requests == 2
    assert {a for a in answers} == {(True, answers[0][1])}
    assert answers[0][1] not in (None, first)
    # A 401 for a token already replaced costs nothing more.
    assert await actor.refresh_after_401(first) == (True, answers[0][1])
    assert mock.state.token_requests == 2
    await actor.close()
