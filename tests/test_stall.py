"""Stalls end to end, counted at an aiohttp.web server (in a thread) that timestamps
every arrival: a client stopped for 1 s (SIGSTOP) catches up without a burst, and a
server that stalls for 1 s drops nothing with the default --max-in-flight (issue 13
items 1-2). The dropped calls are named apart from the failed ones everywhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from pathlib import Path

import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "examples" / "pageviews.jsonl"
ENV = {**os.environ, "ADBATCH_TOKEN": "stall-token", "PYTHONDONTWRITEBYTECODE": "1"}


class Server:
    """aiohttp.web on 127.0.0.1 in a thread; `arrivals`: monotonic timestamps. Calls that
    arrive while `stall_until` is ahead are answered only then (a server stall)."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.stall_until = 0.0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, _request: web.Request) -> web.Response:
        now = time.monotonic()
        self.arrivals.append(now)
        if now < self.stall_until:
            await asyncio.sleep(self.stall_until - now)
        return web.Response(body=b'{"status":"OK","placements":[]}',
                            content_type="application/json")  # fmt: skip

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        runner = self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> Server:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def load(self, *args: str, summary: Path) -> subprocess.Popen[bytes]:
        endpoint = f"http://127.0.0.1:{self.port}/delivery/retailmedia"
        cmd = [sys.executable, "-m", "engine", "load", str(EVENTS), *args,
               "--endpoint", endpoint, "-o", os.devnull, "--summary", str(summary)]  # fmt: skip
        return subprocess.Popen(
            cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait_first(self) -> None:
        deadline = time.monotonic() + 30
        while not self.arrivals and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.arrivals, "no call arrived"


def windows(arrivals: list[float], start: float, width: float = 0.1) -> list[int]:
    """Arrivals in [t, t + width) for every arrival t at or after `start`."""
    first = bisect_left(arrivals, start)
    return [bisect_left(arrivals, t + width) - i for i, t in enumerate(arrivals) if i >= first]


@pytest.mark.slow
def test_a_stopped_client_catches_up_at_most_25_percent_above_the_rate(tmp_path: Path) -> None:
    """load --rate 200 --duration 4s, SIGSTOP for 1 s mid-run, SIGCONT: the 200 calls of
    the stall are made up at 1.15x (CatchUp's default), so no 100 ms window carries
    more than 1.25x its share (25), never as a burst, and all 800 calls arrive."""
    summary = tmp_path / "summary.json"
    with Server() as server:
        proc = server.load("--rate", "200", "--duration", "4s", summary=summary)
        server.wait_first()
        time.sleep(1.0)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        resumed = time.monotonic()
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
        arrivals = sorted(server.arrivals)
    assert proc.returncode == 0, err.decode()
    assert len(arrivals) == 800  # spread: every call of the plan is sent
    after = windows(arrivals, resumed)
    # The share of a 100 ms window is 20; the promise is 1.25x, 25. Catching up at 1.15x
    # (23 a window) leaves +1 for a window that starts on an arrival and ends just after
    # another, and +1 for CatchUp's 5 ms slack (1.15 at 230/s). Slack of the test, +4: the
    # server's event loop timestamps the calls it reads in one pass together, and on a
    # loaded CI machine (2 CPUs, the rest of the suite) a pass can hold a few more. A
    # burst would be 200.
    assert max(after) <= 25 + 4, max(after)
    # ... and it does catch up: 1.15x for the 1 s after the stall is 230 calls, where
    # sending the backlog at the planned rate would give 200 (210: slack for a loaded CI).
    caught_up = bisect_left(arrivals, resumed + 1.0) - bisect_left(arrivals, resumed)
    assert caught_up >= 210, caught_up
    data = json.loads(summary.read_text())
    assert data["dropped"] == 0
    assert data["summary"]["dropped"] == 0


@pytest.mark.slow
def test_a_server_stall_of_1s_drops_nothing_with_the_defaults(tmp_path: Path) -> None:
    """500/s, the server answers nothing for 1 s: with the default --max-in-flight (500 x
    (--timeout 5 + 1) slots, not 256) every call is sent and answered, none dropped."""
    summary = tmp_path / "summary.json"
    with Server() as server:
        proc = server.load("--rate", "500", "--duration", "3s", summary=summary)
        server.wait_first()
        time.sleep(0.5)
        server.stall_until = time.monotonic() + 1.0
        _, err = proc.communicate(timeout=60)
        arrivals = len(server.arrivals)
    text = err.decode()
    assert proc.returncode == 0, text
    data = json.loads(summary.read_text())
    assert (data["dropped"], data["summary"]["dropped"], data["summary"]["failed"]) == (0, 0, 0)
    assert arrivals == 1500
    assert data["summary"]["ok"] == 1500
    assert "1500 ok, 0 failed, 0 invalid" in text, text


@pytest.mark.slow
def test_dropped_calls_are_named_dropped_everywhere(tmp_path: Path) -> None:
    """--max-in-flight 4 against a stalled server: the summary line, the --summary JSON
    and adbatch report all count the drops as dropped, none as failed."""
    summary = tmp_path / "summary.json"
    out = tmp_path / "out.jsonl"
    with Server() as server:
        server.stall_until = time.monotonic() + 60
        endpoint = f"http://127.0.0.1:{server.port}/delivery/retailmedia"
        cmd = [sys.executable, "-m", "engine", "load", str(EVENTS), "--rate", "100",
               "--duration", "1s", "--max-in-flight", "4", "--timeout", "0.5",
               "--endpoint", endpoint, "-o", str(out), "--summary", str(summary)]  # fmt: skip
        done = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    data = json.loads(summary.read_text())
    dropped, failed = data["summary"]["dropped"], data["summary"]["failed"]
    assert dropped > 50
    assert data["dropped"] == dropped
    assert 0 < failed < 20  # the timeouts of the 4 slots, a few rounds of them
    line = err.splitlines()[0]
    assert f"{failed} failed, {dropped} dropped," in line, line
    assert "dropped x" not in err
    assert f"{failed + dropped} failed" not in err
    report = subprocess.run([sys.executable, "-m", "engine", "report", str(out)],
                            env=ENV, cwd=ROOT, capture_output=True, timeout=60)  # fmt: skip
    text = report.stdout.decode() + report.stderr.decode()
    assert f"failed {failed}, dropped {dropped}" in text, text
