"""The event loop of a run: uvloop when installed, and the process set up once: the
collector tuned, the soft limit on open files raised to the hard one.

Open files: a run holds one socket per call in flight. The soft limit is often 1024
while the hard one is far higher; raising it is what `ulimit -n` would do, once per
process (a --workers child too). A run that still does not fit is refused before it
starts (`check_open_files`), rather than failing its calls one by one with EMFILE.

Garbage-collector settings for a long run (once per process, before the event loop).

A run allocates a few container objects per call (aiohttp's request and response,
futures, records) that die young, on top of ~100,000 long-lived objects from the
imports. With CPython's defaults (a young collection every 700 net allocations, the
older generations every 10 of the younger) the collector walks that heap again and
again: ~0.7 s of CPU per 20,000 events on the benchmark machine, 6-7% of a run.
`gc.freeze()` moves what exists at start-up out of the collector's sight and a larger
first threshold makes young collections rarer; cycles are still collected and memory
stays flat (benchmarks/run.py's RSS check).

Start-up (issue 18): the command line keeps the collector off while it imports the
command's modules (engine/cli/main.py), then calls `tune_gc`: the ~50 collections those
imports would trigger cost ~10 ms of a 0-event run. No full collection comes before the
freeze either (~5-8 ms): the imports leave a few hundred objects of garbage, frozen once
and never grown. anyio is imported when a loop is run, not with this module, which the
CLI imports for `tune_gc` on every command.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from engine.errors import ConfigError
from engine.runtime.malloc import tune_malloc

if TYPE_CHECKING:
    from engine.config import Config

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
    gc.freeze()  # no gc.collect() first: see the module's docstring
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, young), older, oldest)


#: Open files a process needs beside one socket per call in flight: stdio, the inputs and
#: outputs, the event loop's, the token client's connections.
SPARE_FILES = 100
#: Open files the --workers parent holds per worker: its end of the worker's pipe and
#: the two of multiprocessing's own (the process's sentinel and its finalizer's pipe).
FILES_PER_WORKER = 3

_raised = False


def raise_open_files() -> tuple[int, int] | None:
    """Raise the soft limit on open files to the hard one (the first call acts);
    (soft, hard) as they are then, None where there is no such limit (or it is infinite)."""
    global _raised
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if not _raised:
        _raised = True
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass  # (macOS refuses an infinite soft limit): keep what there is
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return soft, hard


def connection_budget(config: Config) -> int | None:
    """The connections one process of this run can open for its calls, the soft limit on
    open files raised first: the limit less SPARE_FILES, halved with --mock (its server
    side is in this process too); None: no limit. A computed
    load/replay --max-in-flight caps its connection pool at this (the calls past it wait
    for a connection, in their latency from the schedule) instead of being refused."""
    limits = raise_open_files()
    if limits is None:
        return None
    soft = limits[0] - SPARE_FILES
    return max(1, soft // (2 if config.mock else 1))


def check_open_files(config: Config, *, option: str = "-c") -> None:
    """Raise ConfigError (exit 2) when one process of this run would need more open files
    than its limit allows, even raised (`open_files_problem`)."""
    limits = raise_open_files()
    if limits is None or config.dry_run:
        return
    problem = open_files_problem(config, *limits, option=option)
    if problem is not None:
        raise ConfigError(problem)


def open_files_problem(config: Config, soft: int, hard: int, *, option: str = "-c") -> str | None:
    """What is wrong when one process needs more open files than `soft`, else None: -c
    sockets (a --workers child: its share), the embedded mock's side of them with --mock,
    the --workers parent's pipes and SPARE_FILES. The message names the option that drives
    the count: `option` (the one the calls in flight were given with: -c, or load and
    replay's --max-in-flight, which pass it as config.concurrency) or --workers, whose
    pipes are named when they alone break the limit or outweigh the calls' sockets; and
    when the limit is too low for one call in flight, it says so rather than advise
    lowering an option that cannot help."""
    concurrency = config.concurrency
    calls = math.ceil(concurrency / config.workers) + (concurrency if config.mock else 0)
    pipes = FILES_PER_WORKER * config.workers if config.workers > 1 else 0
    needed = calls + SPARE_FILES + pipes
    if needed <= soft:
        return None
    limit = f"{soft}{'' if hard == soft else f' (hard limit {hard})'}"
    if pipes and (needed - pipes <= soft or pipes > calls):
        given, per, lower = f"--workers {config.workers}", "", "--workers"
    else:
        per = f" per process ({config.workers} workers)" if config.workers > 1 else ""
        given, lower = f"{option} {concurrency}", option
    floor = SPARE_FILES + 1 + (1 if config.mock else 0)  # one call in flight, one process
    if floor > soft:
        return (
            f"{given} needs about {needed} open files{per} but the limit is {limit}, under "
            f"the {floor} of the smallest run ({option} 1, one process): raise the limit "
            "(ulimit -n)"
        )
    return (
        f"{given} needs about {needed} open files{per} but the limit is {limit}: "
        f"lower {lower} or raise the limit (ulimit -n)"
    )


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
    import anyio

    options = backend_options()  # imports uvloop: before the freeze, frozen with the rest
    tune_gc()
    tune_malloc()
    raise_open_files()
    return anyio.run(fn, *args, backend_options=options)
