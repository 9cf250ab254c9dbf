"""The benchmark harness runs end to end on a few hundred events and prints its table.

It checks only that the harness completes (every client wrote one record per event,
which the harness itself verifies) and prints the table; the figures are not asserted:
CI machines are small and shared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_harness_completes_and_prints_the_table() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--events", "300",
        "--rounds", "1",
        "--concurrency", "16",
        "--rss-events", "300",
        "--rss-small", "100",
        "--quick",
        "--compare", "HEAD",  # the committed version, interleaved with the work tree's
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "| client | events/s (median) |" in out
    for row in ("baseline (asyncio + aiohttp)", "adbatch run, 1 process", "--workers 2"):
        assert f"| {row}" in out or row in out, row
    assert "adbatch 1 process / baseline:" in out
    assert "| adbatch run, 1 process @ HEAD |" in out
    assert "this version / HEAD: 1 process" in out
    assert "Peak RSS on stdin" in out
