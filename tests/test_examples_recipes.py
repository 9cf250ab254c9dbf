"""The examples/ recipes run end to end on the embedded mock (shortened by their knobs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent

# End to end (bash, two adbatch processes each): 1.3-1.7 s a test, so slow.
pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash"),
    pytest.mark.slow,
]


def run_recipe(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "ADBATCH": f"{sys.executable} -m engine",
        "OUT": str(tmp_path / "out"),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        ["bash", str(ROOT / "examples" / script), "--mock"],
        capture_output=True, text=True, timeout=50, env=environ, check=False,
    )  # fmt: skip


def test_load_recipe_on_mock(tmp_path: Path) -> None:
    proc = run_recipe("load-test.sh", tmp_path, STAGES="0s:40,1s:40")
    assert proc.returncode == 0, proc.stderr
    assert "40 scheduled, 40 sent, 0 dropped" in proc.stderr
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["sent"] == 40
    assert (tmp_path / "out" / "report.html").read_text().count("<svg") == 6
    assert "records   40" in proc.stdout


def test_replay_recipe_on_mock(tmp_path: Path) -> None:
    proc = run_recipe("replay.sh", tmp_path, SPEED="100", MAX_GAP="0.05")
    assert proc.returncode == 0, proc.stderr
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    lines = (ROOT / "examples" / "access.log").read_text().splitlines()
    assert summary["ok"] == len(lines) == 40
    assert (tmp_path / "out" / "report.html").exists()
