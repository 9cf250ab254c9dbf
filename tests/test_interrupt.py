"""The CLI in a subprocess, killed or interrupted mid-run, then resumed (mock in-process)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from conftest import events, exactly_once, read_records
from web_app import serving

from engine.mock import MockConfig, MockHandle, running_mock

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: The signal tests run in one process and with --workers 2 (the parent halts the workers).
PROCESSES = pytest.mark.parametrize(
    "procs", [pytest.param([], id="1-process"), pytest.param(["--workers", "2"], id="workers")]
)

ROOT = Path(__file__).resolve().parent.parent


def start(
    server: MockHandle | str,
    inputs: Path | str,
    out: Path,
    *args: str,
    stdin: int | None = None,
) -> subprocess.Popen[bytes]:
    """The CLI sending `inputs` to the mock (or the delivery URL `server`)."""
    env = {**os.environ, "ADBATCH_TOKEN": "mock-token", "PYTHONPATH": str(ROOT)}
    err = out.with_name(f"stderr-{time.monotonic_ns()}.txt")
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                "run",
                "--endpoint",
                server if isinstance(server, str) else server.delivery_url,
                "-o",
                str(out),
                "--no-progress",
                *args,
                str(inputs),
            ],
            env=env,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    STDERR[proc.pid] = err
    return proc


STDERR: dict[int, Path] = {}


async def wait_exit(proc: subprocess.Popen[bytes], limit: float) -> tuple[int, str]:
    """Poll without blocking the event loop (the mock serves on it)."""
    with anyio.fail_after(limit):
        while proc.poll() is None:  # noqa: ASYNC110 - a child's exit is no anyio event
            await anyio.sleep(0.02)
    stderr = STDERR.pop(proc.pid).read_text()
    assert "Traceback" not in stderr, stderr
    return proc.returncode, stderr


async def wait_for(cond: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    with anyio.fail_after(30):
        while not cond():
            assert proc.poll() is None, "the run ended before it could be interrupted"
            await anyio.sleep(0.01)


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def answered_once(records: list[dict[str, Any]], n: int) -> None:
    exactly_once(records, n)
    assert all(r["status"] == 200 for r in records)


async def test_kill_9_then_resume(tmp_path: Path, write_jsonl: Callable[..., Path]) -> None:
    """Must show: kill -9 mid-run, --resume: all exactly once, repeats <= calls in flight."""
    n, concurrency = 1500, 16
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(latency=0.04)) as mock:
        proc = start(mock, inputs, out, "-c", str(concurrency))
        await wait_for(lambda: lines_in(out) >= 300, proc)
        proc.kill()
        rc, _ = await wait_exit(proc, 10)
        assert rc == -signal.SIGKILL
        written = lines_in(out)
        assert 300 <= written < n
        await anyio.sleep(0.1)  # let requests on the wire reach the mock
        calls_at_kill = mock.state.delivery_requests
        resumed = start(mock, inputs, out, "--resume", "-c", str(concurrency))
        rc, stderr = await wait_exit(resumed, 60)
        assert rc == 0, stderr
        calls = mock.state.delivery_requests
    records = read_records(out)
    answered_once(records, n)
    assert f"{written} already answered" in stderr or written == 0
    repeated = calls - n
    print(f"kill -9 after {written} records: {repeated} calls repeated")
    # Exactly the calls made but not written are made again (none written twice)...
    assert repeated == calls_at_kill - written
    # ...and those are the calls in flight, which the pool size bounds.
    assert 0 <= repeated <= concurrency, f"{repeated} calls repeated"


@PROCESSES
async def test_sigint_finishes_in_flight_calls_then_resume(
    tmp_path: Path, write_jsonl: Callable[..., Path], procs: list[str]
) -> None:
    """Must show: SIGINT ends within --grace with a whole file; --resume completes it."""
    n, grace = 1500, 5.0
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(latency=0.04)) as mock:
        proc = start(mock, inputs, out, "-c", "16", "--grace", str(grace), *procs)
        await wait_for(lambda: lines_in(out) >= 300, proc)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        rc, stderr = await wait_exit(proc, grace + 10)
        took = time.monotonic() - sent
        assert rc == 130, stderr
        assert took < grace + 2.0
        assert "interrupted by SIGINT" in stderr
        assert "--resume" in stderr
        assert " events in " in stderr  # the summary line
        first = read_records(out)
        assert 300 <= len(first) < n
        calls_before = mock.state.delivery_requests
        # Calls in flight were let finish and written: nothing answered is lost.
        assert calls_before == len(first)
        resumed = start(mock, inputs, out, "--resume", "-c", "16")
        rc, stderr = await wait_exit(resumed, 60)
        assert rc == 0, stderr
        calls = mock.state.delivery_requests
    answered_once(read_records(out), n)
    assert calls == n  # not one call repeated


@PROCESSES
async def test_sigterm_grace_expires_then_resume(
    tmp_path: Path, write_jsonl: Callable[..., Path], procs: list[str]
) -> None:
    n, grace = 8, 0.5
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(latency=20.0)) as slow:
        proc = start(slow, inputs, out, "-c", "8", "--grace", str(grace), "--timeout", "60", *procs)
        await wait_for(lambda: slow.state.delivery_requests >= n, proc)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        rc, stderr = await wait_exit(proc, 15)
        took = time.monotonic() - sent
    assert rc == 143
    assert grace * 0.9 <= took < grace + 3.0
    assert "interrupted by SIGTERM" in stderr
    assert read_records(out) == []  # cut-off calls are not written...
    async with running_mock() as fast:
        resumed = start(fast, inputs, out, "--resume")
        rc, stderr = await wait_exit(resumed, 30)
        assert rc == 0, stderr
        assert fast.state.delivery_requests == n  # ...so resume sends them
    answered_once(read_records(out), n)


@PROCESSES
async def test_second_signal_stops_at_once(
    tmp_path: Path, write_jsonl: Callable[..., Path], procs: list[str]
) -> None:
    inputs = write_jsonl(events(4))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(latency=20.0)) as slow:
        proc = start(slow, inputs, out, "-c", "4", "--grace", "60", "--timeout", "60", *procs)
        await wait_for(lambda: slow.state.delivery_requests >= 4, proc)
        proc.send_signal(signal.SIGINT)
        await anyio.sleep(0.3)
        assert proc.poll() is None  # the grace period holds it
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        rc, stderr = await wait_exit(proc, 15)
        assert time.monotonic() - sent < 3.0
    assert rc == 130
    assert read_records(out) == []
    # The stop line says what the second signal did, not the grace it cut short.
    stopped = "adbatch: stopped: interrupted by SIGINT, then SIGINT: the calls in flight "
    stopped += "were cut off, not written; run again with --resume to send the rest"
    assert stopped in stderr.splitlines(), stderr


@PROCESSES
async def test_sigint_while_reading_a_silent_stdin(tmp_path: Path, procs: list[str]) -> None:
    """A read blocked on a pipe that never ends must not hold the exit."""
    out = tmp_path / "out.jsonl"
    async with running_mock() as mock:
        proc = start(mock, "-", out, *procs, stdin=subprocess.PIPE)
        try:
            await wait_for(out.exists, proc)  # the output opens once the run has started
            await anyio.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            rc, stderr_text = await wait_exit(proc, 5)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
    assert rc == 130
    assert "interrupted by SIGINT" in stderr_text


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.asynccontextmanager
async def held_after(fast: int) -> AsyncIterator[tuple[str, Counter[str], anyio.Event]]:
    """A delivery server that answers its first `fast` calls at once and holds the later
    ones until the event is set; yields its URL, the calls by visitor id, and the event."""
    calls: Counter[str] = Counter()
    release = anyio.Event()

    async def deliver(request: web.Request) -> web.Response:
        calls[request.query["retailer-visitor-id"]] += 1
        if calls.total() > fast:
            await release.wait()
        return web.json_response({"placements": []})

    app = web.Application()
    app.router.add_get("/delivery", deliver)
    async with serving(app) as base:
        try:
            yield f"{base}/delivery", calls, release
        finally:
            release.set()  # no handler left waiting as the server stops


async def test_kill_9_of_the_parent_kills_the_workers_then_resume(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    """The workers of a killed parent die with it and write nothing more, so a --resume
    started at once leaves exactly one line per event: the calls they had in flight are
    lost, as after kill -9 of one process, and sent again once. Before, they lived on
    (--grace) and their late records landed after the resume's: those events twice."""
    n, fast, concurrency = 40, 16, 8
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    async with held_after(fast) as (url, calls, release):
        args = ("-c", str(concurrency), "--workers", "2", "--grace", "60", "--timeout", "60")
        proc = start(url, inputs, out, *args)
        # The fast calls written, the next ones held in flight.
        await wait_for(lambda: lines_in(out) == fast and calls.total() == fast + concurrency, proc)
        children = _children(proc.pid)
        assert len(children) == 2
        proc.kill()
        rc, _ = await wait_exit(proc, 10)
        assert rc == -signal.SIGKILL
        with anyio.fail_after(1.0):  # gone, not waiting for their calls in flight
            while any(_running(pid) for pid in children):  # noqa: ASYNC110 - no anyio event
                await anyio.sleep(0.02)
        release.set()  # what a dead worker still had in flight is answered to nobody
        resumed = start(url, inputs, out, "--resume", "-c", str(concurrency))  # at once
        rc, stderr = await wait_exit(resumed, 30)
        assert rc == 0, stderr
    assert f"{fast} already answered" in stderr
    answered_once(read_records(out), n)
    # Only the calls the workers had in flight were made twice (lost, then resumed).
    assert sorted(calls.values()) == [1] * (n - concurrency) + [2] * concurrency
