"""Orderly stop of a run: halt, grace period, signals.

Rules:
- `halt(reason)` stops reading input and starting calls; calls in flight go on.
- The first SIGINT/SIGTERM halts and gives the calls in flight `grace` seconds, then
  cancels them; a second signal cancels them at once. A cancelled call is not written,
  so `--resume` sends its event again.
- Waits that are not calls in flight (backoff, adaptive pacing, rate permits) end at
  once on halt, and on `end_waits` (a run that stops itself: its own reason and exit
  code stay the run's, so it does not `halt`). No call starts after either.
- A step that blocks the event loop and cannot be cancelled by a scope (the join of an
  `-o URL`'s parts, `adbatch merge`'s upload) runs `interruptible`: there a SIGINT or
  SIGTERM raises `Interrupted` at once, whose unwinding discards what the step had begun
  (an upload is aborted, files/servermerge.py and storage.writing), and the caller says
  so; outside it the signal would end the process before the summary (SIGTERM's default).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import anyio
import anyio.abc


def interrupt_reason(
    signum: int, grace: float, *, resumable: bool = True, again: int | None = None
) -> str:
    """What the summary says of a run stopped by signal `signum` (`again`: then by this
    second one, which cut the calls in flight off); `resumable` False: a load test or a
    replay, which sends a schedule and has no --resume."""
    name = signal.Signals(signum).name
    reason = (
        f"interrupted by {name}; calls in flight were given {grace:g}s to finish"
        if again is None
        else f"interrupted by {name}, then {signal.Signals(again).name}: the calls in "
        "flight were cut off, not written"
    )
    return reason + "; run again with --resume to send the rest" if resumable else reason


class Interrupted(BaseException):
    """SIGINT or SIGTERM during an `interruptible` step. A BaseException, as
    KeyboardInterrupt is: no `except Exception` on the way takes it for a failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible(enabled: bool = True) -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the block (main thread only; `enabled`
    False, or another thread: the handlers are left as they are)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    kept = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


class Shutdown:
    """The stop switches of one run; the engine wraps its stages in the two scopes."""

    __slots__ = ("_waits", "feed_scope", "halted", "interrupted", "reason", "work_scope")

    def __init__(self) -> None:
        self.halted = anyio.Event()
        self.feed_scope = anyio.CancelScope()  # reading input
        self.work_scope = anyio.CancelScope()  # the worker pool (calls in flight)
        self.interrupted: int | None = None  # the signal number
        self.reason: str | None = None
        self._waits: set[anyio.CancelScope] = set()  # the `wait`s under way

    def halt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.end_waits()
        self.feed_scope.cancel()

    def end_waits(self) -> None:
        """Halted, without a reason of its own: every wait ends now, no call starts."""
        self.halted.set()
        for scope in self._waits:
            scope.cancel()
        self._waits.clear()

    async def wait(self, waiting: Callable[[], Awaitable[None]]) -> None:
        """Await `waiting()` (a rate permit), cut short when the run halts meanwhile;
        the caller asks `halted` after. A scope per wait: only runs with --rate pay."""
        if self.halted.is_set():
            return
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                await waiting()
            finally:
                self._waits.discard(scope)

    async def pause(self, seconds: float) -> bool:
        """Sleep `seconds`; False (at once) when the run halts meanwhile."""
        with anyio.move_on_after(seconds):
            await self.halted.wait()
            return False
        return True

    async def watch_signals(
        self, tg: anyio.abc.TaskGroup, grace: float, *, resumable: bool = True
    ) -> None:
        """Run in the run's task group (main thread only) until it is cancelled."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.interrupted is None:
                    self.interrupted = int(signum)
                    self.halt(interrupt_reason(signum, grace, resumable=resumable))
                    self.cut_off_after(tg, grace)
                else:
                    first = self.interrupted
                    self.reason = interrupt_reason(first, grace, resumable=resumable, again=signum)
                    self.work_scope.cancel()
                    return

    def cut_off_after(self, tg: anyio.abc.TaskGroup, grace: float) -> None:
        """Cancel the calls in flight `grace` seconds from now (at once when 0)."""
        if grace <= 0:
            self.work_scope.cancel()
        else:
            tg.start_soon(self._cancel_work_after, grace)

    async def _cancel_work_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        self.work_scope.cancel()
