"""The hot path around the call (issue 18): the feed's batch queue, run counters added a
batch at a time (same figures as one by one), and records' bytes (in process, no server)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from multiprocessing import Pipe

import anyio
import pytest

from engine.core.bulkstats import add_results
from engine.core.events import Event, Invalid
from engine.core.records import (
    Response,
    Result,
    answered,
    dropped,
    dry_run,
    internal,
    invalid,
)
from engine.core.stats import RunStats
from engine.multiproc.pipes import PipeReader, PipeWriter
from engine.runtime.batches import BatchQueue
from engine.runtime.limits import in_hand, make_limiter

pytestmark = pytest.mark.anyio


def _event(seq: int, event_id: str | None = None) -> Event:
    return Event(seq, f"in.jsonl:{seq + 1}", event_id, None, (("k", "v"),), ())


def _mixed_records() -> list[Result]:
    """One of every kind of record, several times over, in an irregular order."""
    records: list[Result] = []
    for seq in range(0, 400, 20):
        ev = _event(seq, f"e{seq}")
        latency = 0.0005 + seq * 0.37
        records += [
            answered(ev, Response(200, b'{"a":1}', 1.7e9 + seq, latency), 1),
            answered(ev, Response(204, b"", 1.7e9, latency * 2), 2, retries=("http_503",)),
            answered(
                ev,
                Response(503, b'{"error":"busy"}', 1.7e9, 3.0),
                3,
                retries=("http_503", "timeout"),
            ),
            answered(ev, Response(401, b"", 1.7e9, 1.0), 1),
            answered(ev, Response(None, b"", 1.7e9, 9.0, "timed out", "timeout"), 2),
            answered(ev, Response(200, b"x" * 10, 1.7e9, 5.0, "too big", "too_large"), 1),
            invalid(Invalid(seq + 1, "in.jsonl:2", None, "missing keywords")),
            dropped(ev, 1.7e9, 64),
            dry_run(ev, b'{"url":"u"}'),
            internal(ev, ValueError("boom")),
            answered(ev, Response(200, b"[]", 1.7e9, 0.0), 1),  # a zero latency
        ]
    return records


def _figures(stats: RunStats) -> dict[str, object]:
    return {
        name: getattr(stats, name)
        for name in stats.__slots__  # type: ignore[attr-defined]
        if name != "latency"
    } | {"latency": stats.latency.to_dict()}


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_counting_in_batches_gives_the_figures_of_one_by_one(size: int) -> None:
    records = _mixed_records()
    one_by_one, in_batches = RunStats(), RunStats()
    for result in records:
        for reason in result.retries:
            one_by_one.retries[reason] += 1
        one_by_one.add_result(result)
    for start in range(0, len(records), size):
        add_results(in_batches, records[start : start + size])
    assert _figures(in_batches) == _figures(one_by_one)
    assert in_batches.ok == 80
    assert in_batches.events == len(records)


async def test_items_come_out_in_order_whatever_the_batches() -> None:
    queue = BatchQueue[int](capacity=8)
    got: list[int] = []

    async def take() -> None:
        while (item := await queue.get()) is not None:
            got.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        tg.start_soon(take)
        for start in range(0, 100, 10):
            await queue.put(list(range(start, start + 10)))
        queue.close()
    assert sorted(got) == list(range(100))


async def test_the_feed_waits_while_the_queue_is_full() -> None:
    queue = BatchQueue[int](capacity=4)
    await queue.put([1, 2, 3, 4, 5])  # one batch always goes in whole
    put_done = anyio.Event()

    async def put_more() -> None:
        await queue.put([6])
        put_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(put_more)
        await anyio.wait_all_tasks_blocked()
        assert not put_done.is_set()
        assert len(queue) == 5
        assert [queue.pop(), queue.pop()] == [1, 2]
        await anyio.wait_all_tasks_blocked()
        assert not put_done.is_set()  # 3 left: above half the capacity
        assert queue.pop() == 3
        await put_done.wait()  # 2 left: the feed goes on
    assert [queue.pop(), queue.pop(), queue.pop(), queue.pop()] == [4, 5, 6, None]


async def test_close_ends_every_waiting_worker_after_what_is_left() -> None:
    queue = BatchQueue[int](capacity=4)
    ended: list[int | None] = []

    async def take() -> None:
        ended.append(await queue.get())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        await queue.put([7])
        queue.close()
    assert sorted(ended, key=str) == [7, None, None]
    assert await queue.get() is None


async def test_a_cancelled_worker_hands_its_wake_up_on() -> None:
    queue = BatchQueue[int](capacity=4)
    got: list[int | None] = []

    async def take(scope_out: list[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            scope_out.append(scope)
            got.append(await queue.get())

    async with anyio.create_task_group() as tg:
        first: list[anyio.CancelScope] = []
        second: list[anyio.CancelScope] = []
        tg.start_soon(take, first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(take, second)
        await anyio.wait_all_tasks_blocked()
        await queue.put([1])  # wakes the first waiter ...
        first[0].cancel()  # ... which is cancelled before it runs
        await anyio.wait_all_tasks_blocked()
        queue.close()
    assert [g for g in got if g is not None] == [1]  # taken once, by one of them
    assert len(queue) == 0


async def test_a_pipe_reader_gives_every_message_in_order_then_the_end() -> None:
    ours, theirs = Pipe()
    reader = PipeReader(ours)
    with anyio.move_on_after(0.05):  # a cancelled wait loses nothing
        await reader.recv()
    for n in range(500):
        theirs.send(("units", n))
    theirs.close()
    got = [await reader.recv() for _ in range(500)]
    assert got == [("units", n) for n in range(500)]
    for _ in range(2):  # the end, to every later call too
        with pytest.raises(EOFError):
            await reader.recv()
    ours.close()


@pytest.mark.parametrize(
    ("env", "tuned"),
    [
        pytest.param({}, "True", id="glibc-tuned"),
        pytest.param({"MALLOC_ARENA_MAX": "2"}, "False", id="user-tunes-malloc"),
        pytest.param({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "False", id="tunables"),
    ],
)
def test_malloc_is_tuned_once_unless_the_user_tunes_it(env: dict[str, str], tuned: str) -> None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    code = "from engine.runtime.malloc import tune_malloc as t; print(t(), t())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [tuned, "False"]


async def test_a_permit_of_the_current_chunk_is_taken_without_waiting() -> None:
    limiter = make_limiter(10_000)  # chunks of 50 calls (5 ms)
    assert limiter is not None
    assert not in_hand(limiter)  # nothing granted yet: the caller waits in `acquire`
    await limiter.acquire()
    assert [in_hand(limiter) for _ in range(50)] == [True] * 49 + [False]


async def test_records_are_offered_then_put_and_taken_in_bulk() -> None:
    results = BatchQueue[int](capacity=2)
    assert [results.offer(1), results.offer(2), results.offer(3)] == [True, True, False]
    async with anyio.create_task_group() as tg:
        for n in (3, 4):  # two workers wait for room
            tg.start_soon(results.put, [n])
        await anyio.wait_all_tasks_blocked()
        assert len(results) == 2
        assert results.take(5) == [1, 2]  # wakes both
    assert sorted(results.take(5)) == [3, 4]
    results.close()
    assert not results.offer(5)
    assert await results.get() is None


async def test_a_pipe_writer_sends_in_order_and_reports_a_gone_reader() -> None:
    theirs, ours = Pipe(duplex=False)  # an os.pipe: 300 small messages fit in its buffer
    writer = PipeWriter(ours)
    for n in range(300):
        await writer.send(("answered", n))
    assert [theirs.recv() for _ in range(300)] == [("answered", n) for n in range(300)]
    theirs.close()
    with pytest.raises(BrokenPipeError):  # the reader is gone
        await writer.send(("answered", 300))
    writer.close()
    ours.close()
