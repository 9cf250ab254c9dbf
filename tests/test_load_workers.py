"""Issue 13 items 4 and 5: load and replay send the plan (no retries unless asked; the
attempts shown apart when asked), refuse what they cannot honour, and split one schedule
over `--workers N` processes with one token, one output and one summary.

The server is a small aiohttp.web app on 127.0.0.1 in a thread (the CLI runs its own
loop). It counts arrivals, and for each new connection finds the client process that
holds the other end (Linux /proc: the socket's inode in /proc/net/tcp, then the process
with that inode among its fds): the real observable that two worker processes sent.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from engine.cli.main import main

TOKEN = "test-token-13"
BODY = b'{"status":"OK","placements":[]}'


def _inode_of(client_port: int, server_port: int) -> str | None:
    """The inode of the client socket 127.0.0.1:client_port -> :server_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == client_port
                and int(remote.rsplit(":", 1)[1], 16) == server_port
            ):
                return inode
    return None


def _children() -> list[str]:
    """This process's child processes (the workers), from /proc/self/task/*/children."""
    pids: list[str] = []
    for task in os.listdir("/proc/self/task"):
        try:
            pids += Path(f"/proc/self/task/{task}/children").read_text().split()
        except OSError:
            continue
    return pids


def _pid_of(inode: str) -> int | None:
    """The process holding socket `inode`: this one or one of its children."""
    target = f"socket:[{inode}]"
    for pid in [str(os.getpid()), *_children()]:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
        except OSError:
            continue
    return None


@dataclass
class Server:
    port: int = 0
    fail_every: int = 0  # answer 503 to every n-th request (0: never)
    arrivals: int = 0
    client_pids: Counter[int | None] = field(default_factory=Counter)
    peers: set[int] = field(default_factory=set)
    tokens: Counter[str] = field(default_factory=Counter)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals += 1
        self.tokens[request.headers.get("Authorization", "")] += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None and peer[1] not in self.peers:
            self.peers.add(peer[1])
            inode = _inode_of(peer[1], self.port)  # while the client holds its socket
            self.client_pids[None if inode is None else _pid_of(inode)] += 1
        if self.fail_every and self.arrivals % self.fail_every == 0:
            return web.Response(status=503, text="busy")
        return web.Response(body=BODY, content_type="application/json")


@contextmanager
def serving(fail_every: int = 0) -> Iterator[Server]:
    server = Server(fail_every=fail_every)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.port = runner.addresses[0][1]
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield server
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _events(path: Path, n: int = 5, *, timestamps: bool = False) -> Path:
    lines = [
        {
            "id": f"e{i}",
            "criteo-partner-id": 1,
            "retailer-visitor-id": f"v{i}",
            "event-type": "viewHome",
            "page-id": "viewHome_API_desktop",
            **({"timestamp": 1_700_000_000 + i * 0.005} if timestamps else {}),
        }
        for i in range(n)
    ]
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in lines))
    return path


def _common(server: Server, out: Path, summary: Path) -> list[str]:
    return [
        "--endpoint", f"http://127.0.0.1:{server.port}/delivery",
        "-o", str(out), "--summary", str(summary), "--no-progress",
    ]  # fmt: skip


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    os.environ["ADBATCH_TOKEN"] = TOKEN
    try:
        code = main(argv)
    finally:
        del os.environ["ADBATCH_TOKEN"]
    return code, capsys.readouterr().err


needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds client processes in /proc"
)


@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["load", "replay"])
def test_workers_split_one_schedule(
    mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    with serving() as server:
        if mode == "load":
            args = [str(_events(tmp_path / "e.jsonl")), "--rate", "200", "--duration", "2s"]
            plan = 400
        else:  # 400 events 5 ms apart, at speed 1: 200/s for 2 s
            args = [str(_events(tmp_path / "e.jsonl", 400, timestamps=True))]
            plan = 400
        code, err = _run([mode, *args, "--workers", "2", *_common(server, out, summary)], capsys)
    assert code == 0, err
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    # The union of the shares is the plan: every slot once, one output.
    assert len(records) == plan
    assert abs(server.arrivals - plan) <= plan * 0.02
    if mode == "load":
        assert sorted(r["seq"] for r in records) == list(range(plan))
    scheduled = sorted(r["scheduled_at"] for r in records)
    assert [round(s - scheduled[0], 3) for s in scheduled] == [
        round(i / 200, 3) for i in range(plan)
    ]
    # Two client processes sent, neither of them this one, with the one token.
    pids = {pid for pid in server.client_pids if pid is not None}
    assert len(pids) == 2, server.client_pids
    assert os.getpid() not in pids
    assert set(server.tokens) == {f"Bearer {TOKEN}"}
    # One summary, the workers' histograms merged.
    assert err.count(f"{plan} scheduled, {plan} sent, 0 dropped") == 1
    data = orjson.loads(summary.read_bytes())
    assert data["scheduled"] == plan == data["sent"] == data["summary"]["ok"]
    assert data["attempts"] == plan
    assert data["latency_ms"]["p99"] is not None
    assert data["summary"]["latency_ms"]["p50"] is not None
    assert sum(point["ok"] for point in data["series"]) == plan


@pytest.mark.parametrize("mode", ["load", "replay"])
@pytest.mark.parametrize(
    ("option", "message"),
    [
        pytest.param(["--resume"], "cannot --resume", id="resume"),
        pytest.param(["--ordered"], "cannot --ordered", id="ordered"),
        pytest.param(["--dry-run"], "cannot --dry-run", id="dry-run"),
        pytest.param(["-c", "8"], "--max-in-flight", id="concurrency"),
        pytest.param(["--workers", "2", "-"], "not stdin", id="workers-stdin"),
    ],
)
def test_options_not_honoured_are_refused(
    mode: str,
    option: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    events = str(_events(tmp_path / "e.jsonl", timestamps=True))
    schedule = ["--rate", "5", "--duration", "1s"] if mode == "load" else []
    inputs = [] if "-" in option else [events]
    with serving() as server:
        code, err = _run([mode, "--mock", *inputs, *schedule, *option, "-o", str(out)], capsys)
        assert server.arrivals == 0
    assert code == 2
    assert err.startswith("adbatch: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert out.read_bytes() == b""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("retries", "attempts_shown"),
    [pytest.param([], False, id="default-0"), pytest.param(["--retries", "2"], True, id="on")],
)
def test_load_retries_off_by_default_attempts_apart(
    retries: list[str], attempts_shown: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    with serving(fail_every=2) as server:
        argv = ["load", str(_events(tmp_path / "e.jsonl")), "--rate", "40", "--duration", "0.5s"]
        code, err = _run([*argv, *retries, *_common(server, out, summary)], capsys)
        arrivals = server.arrivals
    data = orjson.loads(summary.read_bytes())
    assert data["scheduled"] == data["sent"] == 20
    assert data["attempts"] == arrivals
    if attempts_shown:  # the 503s were retried: more attempts than calls, said apart
        assert code in (0, 1)
        assert arrivals > 20
        assert f"20 sent, 0 dropped, {arrivals} attempts sent (retries on)" in err
    else:  # the plan and nothing more: every 503 is the call's answer
        assert code == 1
        assert arrivals == 20
        assert "attempts" not in err.splitlines()[1]
        assert data["summary"]["failed"] == 10
