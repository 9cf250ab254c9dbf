"""The pieces of a Ray run that need no Ray: the plan, the rate and token actors."""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import anyio
import pytest
from oauth_client import oauth_tokens

import engine
from engine.core.rates import LeaseSchedule
from engine.distributed.actors import TokenActor
from engine.distributed.plan import meta_path, part_path, plan_shards, prepare
from engine.errors import ConfigError
from engine.files.manifests import scan_part, write_json_atomic
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
    lease = await actor.authorization()
    first = lease.header
    assert first is not None
    assert lease.usable
    assert mock.state.token_requests == 1
    answers: list[tuple[bool, str | None]] = []

    async def refused() -> None:
        ok, renewed = await actor.refresh_after_401(first)
        answers.append((ok, renewed.header))

    async with anyio.create_task_group() as tg:
        for _ in range(20):  # every sender's calls in flight met a 401 at once
            tg.start_soon(refused)
    assert mock.state.token_requests == 2
    assert {a for a in answers} == {(True, answers[0][1])}
    assert answers[0][1] not in (None, first)
    # A 401 for a token already replaced costs nothing more.
    ok, renewed = await actor.refresh_after_401(first)
    assert (ok, renewed.header) == (True, answers[0][1])
    assert mock.state.token_requests == 2
    await actor.close()


# -- the plan of a Ray run ------------------------------------------------------------


def _inputs(tmp_path: Path) -> list[Path]:
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"".join(b'{"id": "ev-%d"}\r\n' % n for n in range(300)) + b'{"id": "last"}')
    packed = tmp_path / "small.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"id": "gz"}\n'))
    table = tmp_path / "t.csv"
    table.write_bytes(b"id,event-type\na,viewHome\n")
    return [big, packed, table]


def test_plan_cuts_jsonl_and_keeps_gzip_and_csv_whole(tmp_path: Path) -> None:
    big, packed, table = _inputs(tmp_path)
    config = engine.Config(inputs=(str(big), str(packed), str(table)), dry_run=True)
    tasks = plan_shards(config, 6)
    assert [t.index for t in tasks] == list(range(len(tasks)))
    ranges = [t for t in tasks if t.path == str(big)]
    assert len(ranges) >= 4
    assert not any(t.whole for t in ranges)
    data = big.read_bytes()
    assert b"".join(data[t.start : t.end] for t in ranges) == data
    assert all(t.first_line == data[: t.start].count(b"\n") + 1 for t in ranges)
    assert [(t.path, t.whole) for t in tasks if t.path != str(big)] == [
        (str(packed), True),
        (str(table), True),
    ]


def test_rerun_reuses_the_plan_and_skips_complete_parts(tmp_path: Path) -> None:
    big, packed, table = _inputs(tmp_path)
    config = engine.Config(inputs=(str(big), str(packed), str(table)), dry_run=True)
    parts = str(tmp_path / "out.jsonl.parts")
    plan, todo = prepare(config, parts, 2, 6)
    assert todo == plan
    # Shard 0 completes (part + meta); an attempt at shard 1 dies mid-way.
    Path(part_path(parts, 0)).write_bytes(b'{"seq":0}\n')
    info = scan_part(part_path(parts, 0))
    write_json_atomic(meta_path(parts, 0), {"rows": info.rows, "sha256": info.sha256})
    Path(part_path(parts, 1) + ".tmp-dead").write_bytes(b'{"seq":0}\n{"se')

    again, todo = prepare(config, parts, 2, 99)  # a different shard count: the plan stands
    assert again == plan
    assert [t.index for t in todo] == [t.index for t in plan[1:]]
    assert not any(".tmp-" in name for name in os.listdir(parts))

    Path(part_path(parts, 0)).write_bytes(b'{"seq":0}\n{"seq":1}\n')  # changed: not complete
    assert prepare(config, parts, 2, 6)[1] == plan

    big.write_bytes(big.read_bytes() + b"\n")  # other inputs: a fresh plan, old parts gone
    fresh, todo = prepare(config, parts, 2, 6)
    assert todo == fresh
    assert sorted(os.listdir(parts)) == ["options.json", "plan.json"]


def test_plan_refuses_a_parts_directory_it_did_not_make(tmp_path: Path) -> None:
    big, _, _ = _inputs(tmp_path)
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    (parts / "precious.txt").write_text("keep me")
    config = engine.Config(inputs=(str(big),), dry_run=True)
    with pytest.raises(ConfigError, match="holds no adbatch plan"):
        prepare(config, str(parts), 2, 4)
    assert (parts / "precious.txt").read_text() == "keep me"
