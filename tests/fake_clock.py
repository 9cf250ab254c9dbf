"""A `Clock` (engine/net/auth.py) that moves only when a test moves it.

Sleepers wake as soon as `set` or `advance` takes the time past their deadline, so a
test makes a token window pass without waiting for it. Imported by name (not a test module).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self._now = now
        self._moved: anyio.Event | None = None

    def now(self) -> float:
        return self._now

    def set(self, now: float) -> None:
        self._now = now
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    async def sleep_until(self, deadline: float) -> None:
        await anyio.lowlevel.checkpoint()
        while self._now < deadline:
            if self._moved is None:
                self._moved = anyio.Event()
            await self._moved.wait()


async def until(
    predicate: Callable[[], bool], *, clock: FakeClock | None = None, step: float = 0.0
) -> None:
    """Wait (bounded, in real time) for background work to make `predicate` true.

    With `clock`, each look also moves it on by `step`: the retry delays of a renewer
    pass while the token endpoint answers in real time. Not a timing assertion.
    """
    with anyio.fail_after(5):
        while not predicate():
            if clock is not None:
                clock.advance(step)
            await anyio.sleep(0.002)
