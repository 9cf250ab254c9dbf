"""Joining a Ray cluster that is not there: one line naming RAY_ADDRESS, exit 2, in
seconds (distributed/cluster.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


@pytest.mark.slow
def test_sigterm_stops_a_ray_run_like_the_local_backend(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import signal
    import time

    events = tmp_path / "in.jsonl"
    # valid events: at --rate 50 they take 40 s, so the run is sending when SIGTERM comes
    events.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in make_events(2000)))
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "--backend", "ray", "--mock", "--no-progress",
         "--rate", "50", str(events), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        plan = Path(f"{out}.parts") / "plan.json"
        deadline = time.monotonic() + 90
        while not plan.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert plan.exists(), proc.stderr.read() if proc.stderr else ""
        time.sleep(1.0)  # the senders are sending
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped: interrupted by SIGTERM" in err, err
    assert "run again" in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-joined; the parts stay for the rerun
