"""benchmarks/storage.py (issue 17 item 5) runs end to end on a few hundred events: every
row (local and S3, in and out) answers each event once, which the harness checks itself,
no part is left after the join, and the table and the store's own MB/s are printed. The
figures are not asserted: CI machines are small and shared."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_storage_benchmark_completes_and_prints_the_table() -> None:
    for module, extra in (("moto", "moto[server]"), ("s3fs", "adbatch[s3]")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install '{extra}'")
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "storage.py"),
        "--events", "300", "--rounds", "1", "--concurrency", "16", "--server", "mock",
        "--part-size", "16KiB",  # several parts: the join has something to do
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "| rows | events/s | vs local |" in out
    for row in ("local -> local", "s3 -> local", "local -> s3", "s3 -> s3", "local -> memory://"):
        assert f"| {row} |" in out, row
    assert "copied" in out  # 16 KiB parts are under S3's 5 MiB: streamed, not merged
    assert "store alone, one thread: PUT" in out
