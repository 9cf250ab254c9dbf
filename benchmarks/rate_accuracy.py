"""How exact `adbatch run --rate` is, and how `load` catches up after a client stall,
counted where it matters: at the server.

A small aiohttp.web server (in a thread of this process) timestamps every arrival. For
each target rate R, `adbatch run --rate R` sends R x --seconds events (the example page
views, repeated) to it, in one process and with `--workers 2`; the achieved rate is
the arrivals per second between 0.5 s after the first and 0.5 s before the last. Then
`adbatch load --rate 500` is stopped with SIGSTOP for 1 s and resumed (SIGCONT), and
the busiest 100 ms window of arrivals (sliding, one window starting at every arrival) is
shown against its scheduled share (rate x 0.1 s), with the arrivals of the 2 s after the
stall (catching up at 1.25x: 2.5 s of schedule), for `--catch-up spread` and `--catch-up skip`.

    python benchmarks/rate_accuracy.py [--rates 50,500,1000,4000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"status":"OK","placements":[]}'


class Server:
    """aiohttp.web on 127.0.0.1 in a thread; `arrivals` holds monotonic timestamps."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, _request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        return web.Response(body=BODY, content_type="application/json")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> Server:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def take(self) -> list[float]:
        got, self.arrivals = self.arrivals, []
        return got


def events_file(directory: Path, n: int) -> Path:
    lines = (ROOT / "examples" / "pageviews.jsonl").read_text().splitlines()
    lines = [ln for ln in lines if ln.strip()]
    path = directory / f"events-{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            event = json.loads(lines[i % len(lines)])
            event["id"] = f"e{i}"
            f.write(json.dumps(event) + "\n")
    return path


def adbatch(*args: str, port: int) -> list[str]:
    endpoint = f"http://127.0.0.1:{port}/delivery/retailmedia"
    return [sys.executable, "-m", "engine", *args, "--endpoint", endpoint, "-o", os.devnull]


ENV = {**os.environ, "ADBATCH_TOKEN": "benchmark-token"}


def measured_rate(arrivals: list[float]) -> float:
    """Arrivals per second in the steady part: the first and last 0.5 s left out (with
    --workers, each process starts and ends on its own; that is start-up, not rate)."""
    if len(arrivals) < 2 or arrivals[-1] - arrivals[0] <= 1.5:
        return 0.0
    lo, hi = arrivals[0] + 0.5, arrivals[-1] - 0.5
    return (bisect_left(arrivals, hi) - bisect_left(arrivals, lo)) / (hi - lo)


def busiest_window(arrivals: list[float], width: float = 0.1) -> int:
    """The most arrivals in any [t, t + width) with t an arrival."""
    return max(
        (bisect_left(arrivals, t + width) - i for i, t in enumerate(arrivals)), default=0
    )


def rate_table(server: Server, rates: list[float], seconds: float, tmp: Path) -> None:
    print("| target /s | run (1 process) /s | error | run --workers 2 /s | error |")
    print("|---:|---:|---:|---:|---:|")
    for rate in rates:
        events = events_file(tmp, int(rate * seconds))
        cells = [f"{rate:.0f}"]
        for extra in ([], ["--workers", "2"]):
            server.take()
            cmd = adbatch("run", str(events), "--rate", str(rate), "-c", "64", *extra,
                          port=server.port)  # fmt: skip
            subprocess.run(cmd, env=ENV, check=True, capture_output=True, cwd=ROOT)
            got = measured_rate(sorted(server.take()))
            cells += [f"{got:.1f}", f"{(got - rate) / rate:+.1%}"]
        print("| " + " | ".join(cells) + " |")


def stall_table(server: Server, rate: float, tmp: Path) -> None:
    print()
    print(f"load --rate {rate:.0f} --duration 4s, SIGSTOP at 1 s for 1 s:")
    print(
        "| --catch-up | busiest 100 ms window | scheduled share | ratio "
        "| arrivals in the 2 s after the stall | arrivals |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    events = ROOT / "examples" / "pageviews.jsonl"
    for mode in ("spread", "skip"):
        server.take()
        cmd = adbatch("load", str(events), "--rate", str(rate), "--duration", "4s",
                      "--catch-up", mode, port=server.port)  # fmt: skip
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        while not server.arrivals:  # the schedule has started
            time.sleep(0.01)
        time.sleep(1.0)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        proc.wait(timeout=60)
        arrivals = sorted(server.take())
        top = busiest_window(arrivals)
        share = rate * 0.1
        # Catching up at 1.25x: 2.5 s of schedule in those 2 s (on time: 2 s of it).
        after = bisect_left(arrivals, resumed + 2.0) - bisect_left(arrivals, resumed)
        print(
            f"| {mode} | {top} | {share:.0f} | {top / share:.2f} | {after} "
            f"({after / (2 * rate):.2f}x the rate) | {len(arrivals)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="50,500,1000,4000")
    parser.add_argument("--seconds", type=float, default=4.0, help="of events per rate")
    parser.add_argument("--stall-rate", type=float, default=500.0)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    with Server() as server, tempfile.TemporaryDirectory() as tmp:
        rate_table(server, rates, args.seconds, Path(tmp))
        stall_table(server, args.stall_rate, Path(tmp))


if __name__ == "__main__":
    main()
