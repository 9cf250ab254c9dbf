"""Joining a Ray cluster that is not there: one line naming RAY_ADDRESS, exit 2, in
seconds (distributed/cluster.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
