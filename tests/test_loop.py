"""engine/runtime/loop.py: the collector is tuned once per process (run in a fresh interpreter
so the test session's own collector keeps its defaults)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from engine.runtime.loop import YOUNG_THRESHOLD, tune_gc
before = gc.get_threshold()
tune_gc()
after = gc.get_threshold()
frozen = gc.get_freeze_count()
tune_gc()
print(before[0], after[0], after[1:] == before[1:], frozen > 0, gc.get_freeze_count() == frozen)
"""


def test_tune_gc_freezes_the_startup_heap_and_raises_the_young_threshold() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    # The interpreter's own young threshold: 700 up to 3.12, 2000 from 3.13 on.
    # (read in a fresh interpreter: this one may have been tuned by a CLI test)
    young = int(subprocess.run(
        [sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    assert out == [str(young), str(max(5000, young)), "True", "True", "True"]
