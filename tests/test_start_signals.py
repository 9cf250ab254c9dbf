"""A signal while the command loads (engine/cli/start.py): one line and the signal's exit
code (130, 143), where Python printed a KeyboardInterrupt traceback from inside an
import. The window is held open: an import hook blocks `engine.cli.main`'s import until
the test has sent its signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The command, with `engine.cli.main`'s import held until stdin is closed (after it
#: has said "loading" on stdout).
HELD = """
import importlib.abc, sys
class Hold(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "engine.cli.main":
            print("loading", flush=True)
            sys.stdin.read()
        return None
sys.meta_path.insert(0, Hold())
sys.argv = ["adbatch", "--version"]
from engine.cli.start import entry
entry()
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_loading_is_one_line_and_its_exit_code(signum: int, code: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"loading\n"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert err == b"adbatch: interrupted\n"


def test_once_loaded_the_command_runs_as_before() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "--version"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"adbatch ")
