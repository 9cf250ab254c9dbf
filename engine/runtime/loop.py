"""The event loop of a run: uvloop when installed, and the collector tuned once per process.

Garbage-collector settings for a long run (once per process, before the event loop).

A run allocates a few container objects per call (aiohttp's request and response,
futures, records) that die young, on top of ~100,000 long-lived objects from the
imports. With CPython's defaults (a young collection every 700 net allocations, the
older generations every 10 of the younger) the collector walks that heap again and
again: ~0.7 s of CPU per 20,000 events on the benchmark machine, 6-7% of a run.
`gc.freeze()` moves what exists at start-up out of the collector's sight and a larger
first threshold makes young collections rarer; cycles are still collected and memory
stays flat (benchmarks/run.py's RSS check).
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

#: Net container allocations between young collections (CPython's default is 700).
YOUNG_THRESHOLD = 5000

_done = False


def tune_gc() -> None:
    """Freeze the start-up heap and make young collections rarer; only the first call acts."""
    global _done
    if _done:
        return
    _done = True
    gc.collect()
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, young), older, oldest)


def backend_options() -> dict[str, Any]:
    """anyio's asyncio options: uvloop when it is installed (a faster event loop)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def run_loop(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run `fn(*args)` on a new event loop (uvloop when installed), the collector tuned
    first: the one way this package starts a loop for a run (the CLI, a --workers child)."""
    tune_gc()
    return anyio.run(fn, *args, backend_options=backend_options())
