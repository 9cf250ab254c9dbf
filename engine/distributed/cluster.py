"""The Ray driver's edges: joining the cluster, and a signal at any time of the run.

Rules:
- RAY_ADDRESS `host:port` (or `ray://host:port`) is checked with a plain TCP connect,
  bounded (`CONNECT_TIMEOUT`), before `ray.init`, which has no timeout of its own and
  waits minutes on a closed port. Whatever `ray.init` raises (`auto` with no cluster, a
  version mismatch) becomes one line naming RAY_ADDRESS: a ConfigError, exit 2.
- SIGINT and SIGTERM stop the run as the local backend's signals do, in every phase:
  one receiver (`signals_caught`) is open from before Ray is imported until the parts
  are joined. The first signal cancels `Interrupt.scope` (Ray's start, the plan, the
  shards); the actors are freed, Ray is shut down, the complete parts kept for a rerun,
  the exit code 128 + the signal. Later signals are absorbed, so the close-down is
  never cut into a traceback, and Python's or Ray's own handlers never see one.
- `ray.init` runs on a thread of its own (`_RayOwner`): on the main thread it replaces
  the SIGTERM handler with its own (`sys.exit(15)`; mid-start-up a 60 s wait for its
  GCS, then exit 1); off it, it leaves Python's handlers alone. Ray's core worker puts
  abseil's crash handler under Python's for SIGTERM (a stack dump, an abort 3 s later:
  exit -6) and `ray.shutdown` sets SIGTERM back to SIG_DFL (the driver simply killed):
  the driver imports Ray with that handler off (`no_crash_handler`, in the driver and
  in every process of a local Ray), and `_reclaim_signals` still puts Python's back
  while `ray.init` runs and once it returns.
- A local Ray that this session started leaves nothing running, and nothing else is
  touched: `ray.init` starts it with an environment mark (`_MARK`, in `os.environ` only
  while `ray.init` runs), which every process of that Ray inherits wherever it is
  reparented; when the run ends, however it ends (a signal mid-start-up, a process
  group's SIGTERM that killed the raylet first), `_reap` kills by pid the processes
  carrying this run's mark that Ray's shutdown left (agents, workers, a half-started
  raylet) and waits only for those. The caller's own processes (a library's) are neither
  killed nor waited for, and the process's subreaper flag is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.abc

from engine.errors import ConfigError, plain_engine_errors

CONNECT_TIMEOUT = 5.0
#: What Ray logs when `ray.init` runs off the main thread, as it does here on purpose.
_NOT_MAIN_THREAD = "SIGTERM handler is not set"
#: How often the driver puts its signal handlers back while `ray.init` runs.
_RECLAIM_EVERY = 0.05
#: How long `_reap` may take, and how long no process may be left for it to be done.
REAP_S = 10.0
_REAP_QUIET_S = 0.3
#: The environment variable that marks a local Ray's processes (not ADBATCH_: warned of).
_MARK = "_ADBATCH_LOCAL_RAY"


def no_crash_handler() -> None:
    """Before `import ray`: Ray's processes (this one too) install no crash handler of
    their own, so SIGTERM stays Python's (the module's rules)."""
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a RAY_ADDRESS that names one; None for `auto`, `local`, ..."""
    address = address.removeprefix("ray://")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """ConfigError when nothing listens at RAY_ADDRESS's host and port."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({why}); "
            "start one (ray start --head) or unset RAY_ADDRESS for a local Ray"
        ) from None


@contextlib.asynccontextmanager
async def ray_session(ray: Any) -> AsyncIterator[None]:
    """Join the cluster at RAY_ADDRESS (or the one already joined), else start a local Ray,
    which leaves nothing running (`_reap`: its own processes only)."""
    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(address)
    mark = None if address is not None else f"{os.getpid()}-{secrets.token_hex(8)}"
    owner = _RayOwner(ray, address, mark)
    owner.start()
    try:
        # The wait is the driver's, not `ray.init`'s: a signal ends it at once.
        while not owner.started.is_set():
            await anyio.sleep(_RECLAIM_EVERY)
            _reclaim_signals()
        if owner.failure is not None:
            raise owner.failure
        _reclaim_signals()
        yield
    finally:
        owner.stop.set()
        with anyio.CancelScope(shield=True):
            if owner.started.is_set():
                await anyio.to_thread.run_sync(owner.join)
                _reclaim_signals()
            if mark is not None:
                # (mid-start-up: what `ray.init` started so far, and starts next)
                await anyio.to_thread.run_sync(_reap, mark)


def _reap(mark: str) -> None:
    """SIGKILL the live processes carrying `mark` (this session's local Ray) until none
    has been left for `_REAP_QUIET_S`: `ray.init`, if still running, may start one more.
    Waits for those of them that are this process's children, and for no other.
    Bounded by `REAP_S`; nothing without /proc (Linux's)."""
    if not os.path.isdir("/proc"):
        return
    end = time.monotonic() + REAP_S
    quiet_since = time.monotonic()
    killed: set[int] = set()
    while time.monotonic() < end and time.monotonic() - quiet_since < _REAP_QUIET_S:
        left = _marked(f"{_MARK}={mark}".encode())
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        killed |= set(left)
        killed -= {pid for pid in killed if _collected(pid)}
        if left:
            quiet_since = time.monotonic()
        time.sleep(0.05)


def _collected(pid: int) -> bool:
    """Whether `pid` needs no more waiting for: collected now, or not this process's child
    (Ray's Popen then finds it gone: no matter)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def _marked(entry: bytes) -> list[int]:
    """The live (not zombie) processes whose environment holds `entry`, from /proc."""
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if entry not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[:1]
        except OSError:
            continue
        if state and state[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def _reclaim_signals() -> None:
    """Install again, below Python, the handlers Python holds for SIGINT and SIGTERM:
    `ray.init` puts abseil's crash handler under SIGTERM (a stack dump, then an abort
    3 s later: exit 134), and Python still believes its own is there."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):  # (SIG_DFL, SIG_IGN: left as they are)
            signal.signal(signum, handler)


class _RayOwner(threading.Thread):
    """The thread that starts Ray and shuts it down (the module's rules). It lives as
    long as Ray: Ray's processes die with the thread that started them (Linux
    PR_SET_PDEATHSIG), so a pool thread that went idle would take them with it. A
    signal during `ray.init` stops the driver's wait, not `ray.init`: the run ends at
    once, and the thread shuts Ray down once `ray.init` returns, or dies with the
    process, and what Ray started with it."""

    def __init__(self, ray: Any, address: str | None, mark: str | None) -> None:
        super().__init__(name="adbatch-ray", daemon=True)
        self._ray = ray
        self._address = address
        self._mark = mark
        self.started = threading.Event()  # ray.init returned, or failed (`failure`)
        self.stop = threading.Event()
        self.failure: ConfigError | None = None

    def run(self) -> None:
        try:
            with _marked_environ(self._mark):
                _init(self._ray, self._address)
        except ConfigError as exc:
            self.failure = exc
            return
        finally:
            self.started.set()
        self.stop.wait()
        self._ray.shutdown()


@contextlib.contextmanager
def _marked_environ(mark: str | None) -> Iterator[None]:
    """`_MARK` in `os.environ` while `ray.init` starts a local Ray's processes (which
    inherit it), and not after: the caller's later processes do not carry it."""
    if mark is None:
        yield
        return
    os.environ[_MARK] = mark
    try:
        yield
    finally:
        if os.environ.get(_MARK) == mark:
            del os.environ[_MARK]


def _init(ray: Any, address: str | None) -> None:
    """`ray.init`, off the main thread (the module's rules); its failure is one line."""
    quiet = logging.getLogger("ray._private.worker")
    hush = _Hush()
    quiet.addFilter(hush)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"RAY_ADDRESS={address}" if address else "a local Ray (RAY_ADDRESS unset)"
        raise ConfigError(f"cannot join {where}: {first}") from None
    finally:
        quiet.removeFilter(hush)


class _Hush(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOT_MAIN_THREAD)


class Interrupt:
    """The run's first SIGINT or SIGTERM (`signum`) and what it stops (`scope`, which may
    be cancelled before it is entered: it then stops at its first checkpoint)."""

    __slots__ = ("scope", "signum")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.signum: int | None = None


@contextlib.asynccontextmanager
async def signals_caught(*, enabled: bool) -> AsyncIterator[Interrupt]:
    """SIGINT and SIGTERM caught for as long as the block runs: the first cancels
    `Interrupt.scope`. `enabled` (the CLI, the main thread): else nothing is caught."""
    interrupt = Interrupt()
    if not enabled:
        yield interrupt
        return
    with plain_engine_errors():  # a ConfigError stays one line, not a group's traceback
        async with anyio.create_task_group() as tg:
            await tg.start(_watch, interrupt)
            try:
                yield interrupt
            finally:
                tg.cancel_scope.cancel()


async def _watch(
    interrupt: Interrupt, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if interrupt.signum is None:
                interrupt.signum = int(signum)
                interrupt.scope.cancel()
