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
    assert out == ["700", "5000", "True", "True", "True"]
