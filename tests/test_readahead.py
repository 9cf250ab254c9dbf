"""Items read ahead on a thread of their own (engine/runtime/readahead.py), and what a
user meets of it: a pipe's lines are sent as they come, not once 256 have."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest

from engine.runtime.readahead import ReadAhead

ROOT = Path(__file__).resolve().parent.parent
EVENT = {
    "event-type": "viewHome",
    "page-id": "p",
    "retailer-visitor-id": "v",
    "criteo-partner-id": 1,
}


@pytest.mark.anyio
async def test_items_come_as_they_are_read_and_the_error_after_them() -> None:
    gate = threading.Event()

    def items() -> Iterator[int]:
        yield 1
        yield 2
        gate.wait(5)  # a quiet pipe: the items before it are taken meanwhile
        yield 3
        raise OSError("the disk went away")

    ahead = ReadAhead(items(), 8)
    before: list[int] = []
    try:
        while len(before) < 2:  # both taken while the read of the third is blocked
            before += await ahead.take(256)
    finally:
        gate.set()
    assert before == [1, 2]
    got: list[int] = []

    async def drain() -> None:
        while batch := await ahead.take(256):
            got.extend(batch)

    with pytest.raises(OSError, match="the disk went away"):
        await drain()  # the error, after every item read before it: never an end
    assert got == [3]
    ahead.close()


@pytest.mark.anyio
async def test_the_thread_reads_no_further_ahead_than_asked() -> None:
    pulled: list[int] = []
    refilled = threading.Event()

    def items() -> Iterator[int]:
        for i in range(1000):
            pulled.append(i)
            if i == 12:  # 3 taken + 10 waiting: the buffer is full again
                refilled.set()
            yield i

    ahead = ReadAhead(items(), 10)
    first = await ahead.take(3)
    assert await anyio.to_thread.run_sync(refilled.wait, 5)
    await anyio.sleep(0.05)  # room for a thread that would read on
    assert first == [0, 1, 2]
    assert len(pulled) <= 14  # and not the 1000 items
    ahead.close()


@pytest.mark.anyio
async def test_close_closes_the_items_in_their_thread_and_never_waits_on_a_silent_read() -> None:
    closed = threading.Event()
    silent = threading.Event()

    def items(block: bool) -> Iterator[int]:
        try:
            yield 1
            if block:
                silent.wait(30)  # a pipe nobody writes to
            yield 2
        finally:
            closed.set()

    ahead = ReadAhead(items(block=False), 1)
    assert await ahead.take(1) == [1]
    ahead.close()
    assert closed.wait(5)  # stopped early: the generator's finally ran

    closed.clear()
    blocked = ReadAhead(items(block=True), 4)
    assert await blocked.take(4) == [1]
    start = time.monotonic()
    blocked.close()  # the thread is in its read: abandoned, not waited for
    assert time.monotonic() - start < 0.5
    silent.set()


@pytest.mark.slow
def test_lines_on_a_pipe_that_goes_quiet_are_sent_at_once(tmp_path: Path) -> None:
    """Three lines, then a stdin that stays open (`tail -f ... | adbatch run -`): their
    records are written while it is still open, and the run ends when it closes."""
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "engine", "run", "--mock", "--no-progress", "-", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    assert proc.stderr is not None
    try:
        lines = b"".join(orjson.dumps({**EVENT, "id": f"e{i}"}) + b"\n" for i in range(3))
        proc.stdin.write(lines)
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") == 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "stdin is still open"
        records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert sorted(r["id"] for r in records) == ["e0", "e1", "e2"]
        assert all(r["ok"] for r in records)
    finally:
        proc.stdin.close()
        assert proc.wait(20) == 0, proc.stderr.read().decode()
        proc.stderr.close()


def test_the_same_pipe_twice_is_refused(tmp_path: Path) -> None:
    """A pipe read to its end once: its second open would wait for a writer forever."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    argv = [sys.executable, "-m", "engine", "run", "--mock", "--no-progress"]
    argv += [str(fifo), str(fifo), "-o", str(tmp_path / "o.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=20)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("is a pipe or a device: it can be read only once")


@pytest.mark.slow
def test_a_run_that_stops_while_stdin_stays_open_ends_with_its_code(tmp_path: Path) -> None:
    """The run stops (30 events for an endpoint nobody listens on: exit 3) while stdin
    is still open and silent: the process ends at once with 3, the read-ahead thread
    still blocked in its read. (A daemon thread holding stdin's lock made the
    interpreter abort at exit, 134; a thread the interpreter waits for would hold the
    exit until stdin closed.)"""
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "engine", "run", "-", "-o", str(out), "--no-progress"]
    argv += ["--endpoint", "http://127.0.0.1:1/d", "--token", "tok-12345678", "--retries", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    assert proc.stderr is not None
    try:
        proc.stdin.write(
            b"".join(orjson.dumps({**EVENT, "id": f"e{i}"}) + b"\n" for i in range(30))
        )
        proc.stdin.flush()
        code = proc.wait(30)  # stdin is still open here
        err = proc.stderr.read().decode()
    finally:
        proc.stdin.close()
        proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 3, err
    assert "Fatal Python error" not in err
    assert "cannot reach the delivery endpoint" in err
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert 20 <= len(records) <= 30  # the streak that stops it, and the calls in flight
    assert {r["error_kind"] for r in records} == {"connect"}


def test_stdin_and_dev_stdin_together_are_refused(tmp_path: Path) -> None:
    """`-` and `/dev/stdin` name the same pipe: read to its end once."""
    argv = [sys.executable, "-m", "engine", "run", "--mock", "--no-progress"]
    argv += ["-", "/dev/stdin", "-o", str(tmp_path / "o.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    line = orjson.dumps({**EVENT, "id": "e0"}) + b"\n"
    done = subprocess.run(argv, input=line, capture_output=True, env=env, timeout=20)
    assert done.returncode == 2
    assert (
        done.stderr.decode()
        .strip()
        .endswith("input /dev/stdin is a pipe or a device: it can be read only once")
    )
