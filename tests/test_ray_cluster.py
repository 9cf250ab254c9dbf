"""The Ray driver's edges (distributed/cluster.py): joining a Ray cluster that is not
there is one line naming RAY_ADDRESS, exit 2, in seconds; a signal in any phase of a Ray
run stops it as the local backend's do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import events as make_events

from engine.distributed.cluster import check_reachable
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_closed_ray_address_is_one_line_naming_it() -> None:
    port = _closed_port()
    with pytest.raises(ConfigError, match=f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="RAY_ADDRESS=ray://"):
        check_reachable(f"ray://127.0.0.1:{port}")
    check_reachable("auto")  # no host and port: left to ray.init


@pytest.mark.slow
def test_run_with_a_closed_ray_address_exits_2_at_once(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    events = tmp_path / "in.jsonl"
    events.write_text('{"id": "ev-1"}\n')
    port = _closed_port()
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--backend", "ray", "--mock", "--no-progress",
         str(events), "-o", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"adbatch: error: RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there "
        "(Connection refused); start one (ray start --head) or unset RAY_ADDRESS for a local Ray"
    ]


def _children(pid: int) -> list[str]:
    """The processes `pid` started (Ray's, once it starts Ray), from any of its threads."""
    return [c for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(phase: str, proc: subprocess.Popen[str], out: Path) -> None:
    """Until Ray starts (the driver's first child process), or the senders send."""
    plan = Path(f"{out}.parts") / "plan.json"
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        if plan.exists() if phase == "sending" else _children(proc.pid):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    if phase == "sending":
        time.sleep(1.0)  # the senders are sending


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "phase", "group"),
    [
        pytest.param(signal.SIGTERM, "start", False, id="sigterm-as-ray-starts"),
        pytest.param(signal.SIGTERM, "start", True, id="sigterm-to-the-group-as-ray-starts"),
        pytest.param(signal.SIGINT, "sending", False, id="sigint-while-sending"),
        pytest.param(signal.SIGTERM, "sending", True, id="sigterm-to-the-group-while-sending"),
    ],
)
def test_a_signal_stops_a_ray_run_like_the_local_backend(
    tmp_path: Path, signum: signal.Signals, phase: str, group: bool
) -> None:
    """In every phase, to the driver or to its process group (`timeout`, systemd, which
    reach Ray's own processes too): 128 + the signal, the summary and one `stopped:`
    line, no traceback or crash report, and nothing left running (cluster.py)."""
    pytest.importorskip("ray")
    events = tmp_path / "in.jsonl"
    # valid events: at --rate 50 they take 40 s, so the run is sending when the signal comes
    events.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in make_events(2000)))
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "--backend", "ray", "--mock", "--no-progress",
         "--rate", "50", str(events), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(phase, proc, out)
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=90)
        deadline = time.monotonic() + 30
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "Ray's processes outlived the run"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert [line for line in err.splitlines() if "stopped" in line] == [
        f"adbatch: stopped: interrupted by {name}; the complete shards are kept in "
        f"{out}.parts: run again to finish"
    ], err
    assert " events in " in err  # the summary line
    assert "Traceback" not in err, err
    assert "received at time" not in err, err  # Ray's crash report
    assert not out.exists()  # nothing half-joined; the parts stay for the rerun
