"""The one plain progress line: rewritten in place on stderr while a run goes on.

Rules:
- Shown only when asked (the CLI asks when stderr is a terminal); never in the output.
- It reads the run's figures and never waits on the run: one refresh per `every` seconds.
- The line is cleared when the display ends, however the run ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import anyio

_CLEAR = "\r\x1b[2K"


async def show_status(text: Callable[[float], str], *, every: float = 0.5) -> None:
    """Show `text(elapsed seconds)` on one line of stderr until cancelled."""
    start = time.perf_counter()
    try:
        while True:
            await anyio.sleep(every)
            sys.stderr.write(_CLEAR + text(time.perf_counter() - start))
            sys.stderr.flush()
    finally:
        sys.stderr.write(_CLEAR)
        sys.stderr.flush()
