"""The Ray driver's edges (distributed/cluster.py): joining a Ray cluster that is not
there is one line naming RAY_ADDRESS, exit 2, in seconds; a signal in any phase of a Ray
run stops it as the local backend's do."""

from __future__ import annotations

import contextlib
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


def _marked(mark: str) -> list[str]:
    """The live processes whose environment holds `mark`: the driver's and every process
    of the local Ray it started, wherever they were reparented, whatever their group."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_bytes().rpartition(b")")[2].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark.encode() in environ.split(b"\0") and state not in (b"Z", b"X"):
            found.append(f"{proc.name} {cmdline[:120]}")
    return found


def _children(pid: int) -> list[str]:
    """The processes `pid` started (Ray's, once it starts Ray), from any of its threads."""
    return [c for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _reached(phase: str, proc: subprocess.Popen[str], out: Path, mark: str) -> bool:
    if phase == "start":  # the driver's first child process
        return bool(_children(proc.pid))
    if phase == "agents":  # the raylet's agents run, the driver joins its Ray
        return any("agent" in p for p in _marked(mark))
    if phase == "closing":  # the last shard's part is in place: the actors close, Ray ends
        return (Path(f"{out}.parts") / "part-00000.jsonl").exists()
    return (Path(f"{out}.parts") / "plan.json").exists()


def _wait_for(phase: str, proc: subprocess.Popen[str], out: Path, mark: str) -> None:
    """Until the run is in `phase`."""
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        if _reached(phase, proc, out, mark):
            break
        time.sleep(0.02)
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
        pytest.param(signal.SIGINT, "agents", False, id="sigint-as-the-driver-joins"),
        pytest.param(signal.SIGTERM, "closing", False, id="sigterms-while-ray-closes"),
    ],
)
def test_a_signal_stops_a_ray_run_like_the_local_backend(
    tmp_path: Path, signum: signal.Signals, phase: str, group: bool
) -> None:
    """In every phase, to the driver or to its process group (`timeout`, systemd, which
    reach Ray's own processes too): 128 + the signal, the summary and one `stopped:`
    line, no traceback or crash report, and nothing left running (cluster.py): no
    process of the run once the driver has exited, in its group or out of it."""
    pytest.importorskip("ray")
    events = tmp_path / "in.jsonl"
    # valid events: at --rate 50 they take 40 s, so the run is sending when the signal
    # comes; for the close-down, 40 events are sent at once
    count = 40 if phase == "closing" else 2000
    events.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in make_events(count)))
    out = tmp_path / "out.jsonl"
    mark = f"TEST_RUN_MARK={tmp_path.name}-{os.getpid()}"  # (not ADBATCH_: warned of)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update([mark.split("=")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "--backend", "ray", "--mock", "--no-progress",
         "--rate", "50", str(events), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(phase, proc, out, mark)
        if group:
            os.killpg(proc.pid, signum)
        elif phase == "closing":  # one now, then more until it exits: some come as Ray ends
            while proc.poll() is None:
                proc.send_signal(signum)
                time.sleep(0.1)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=90)
        time.sleep(0.5)  # (the processes it killed as it ended are gone by now)
        assert _marked(mark) == [], "Ray's processes outlived the run"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in [line.split()[0] for line in _marked(mark)]:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    kept = (
        f"adbatch: stopped: interrupted by {name}; the complete shards are kept in "
        f"{out}.parts: run again to finish"
    )
    joined = (
        f"adbatch: stopped: interrupted by {name} as the parts were joined; the join "
        f"finished: {count} rows in {out}"
    )
    stopped = [line for line in err.splitlines() if "stopped" in line]
    # (the first of a storm may come as the parts are joined: the join then finishes)
    assert stopped == [joined if out.exists() and phase == "closing" else kept], err
    assert " events in " in err  # the summary line
    assert "Traceback" not in err, err
    assert "received at time" not in err, err  # Ray's crash report
    assert out.exists() == (stopped == [joined])  # nothing half-joined; the parts stay


# A library's process: its own child, started before the run, then a run on a local Ray
# that this run starts, with the CLI's signal handling.
_LIBRARY_CALLER = """
import ctypes, subprocess, sys
import anyio, orjson
import engine
from engine.mock import running_mock

async def main() -> None:
    child = subprocess.Popen(["sleep", "30"])
    async with running_mock() as mock:
        config = engine.Config(
            endpoint=mock.delivery_url, token="mock-token", backend="ray",
            inputs=(sys.argv[1],), output=sys.argv[2],
        )
        summary = await engine.run(config, handle_signals=True)
    running = child.poll() is None
    child.terminate()
    subreaper = ctypes.c_int(-1)
    ctypes.CDLL(None).prctl(37, ctypes.byref(subreaper), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    print(orjson.dumps({"ok": summary.ok, "running": running, "status": child.wait(),
                        "subreaper": subreaper.value}).decode())

anyio.run(main)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl, /proc: Linux's")
def test_a_library_callers_own_child_outlives_a_local_ray_run(tmp_path: Path) -> None:
    """engine.run(backend="ray", handle_signals=True) from a library: the local Ray it
    started leaves nothing running, and the caller's own child is neither killed nor
    waited for (its exit status stays its own: -SIGTERM, not the 0 of a status taken
    from under Popen); the process is not left a child subreaper."""
    pytest.importorskip("ray")
    events = tmp_path / "in.jsonl"
    events.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in make_events(20)))
    out = tmp_path / "out.jsonl"
    mark = f"TEST_RUN_MARK={tmp_path.name}-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update([mark.split("=")])
    proc = subprocess.Popen(
        [sys.executable, "-c", _LIBRARY_CALLER, str(events), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    try:
        got, err = proc.communicate(timeout=120)
        time.sleep(0.5)
        assert _marked(mark) == [], "Ray's processes outlived the run"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in [line.split()[0] for line in _marked(mark)]:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    assert proc.returncode == 0, err
    assert orjson.loads(got) == {
        "ok": 20, "running": True, "status": -signal.SIGTERM, "subreaper": 0
    }  # fmt: skip
    assert len(out.read_bytes().splitlines()) == 20
