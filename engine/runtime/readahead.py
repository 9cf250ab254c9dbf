"""Items read ahead on a thread of their own, taken by the event loop as they come.

The reads that may block (stdin, a pipe, a URL, a network filesystem) run on one
long-lived thread that pulls the items and puts each in a buffer as soon as it is read;
the loop takes what is there. So an item is never held back waiting for the next ones:
five lines written to a pipe that then goes quiet are sent at once (`tail -f ... |
adbatch run -`), not once 256 have come or the pipe closed, as when a batch was read
whole on a worker thread before the loop saw any of it.

Rules:
- At most `ahead` items wait in the buffer: the thread waits for room (memory stays
  bounded by the consumer, not by the input).
- An exception the items raise reaches the consumer after every item read before it.
- `close` stops the thread, which closes the items (a generator's `finally` closes its
  files) in its own thread, the one running them; `close` waits for that unless the
  thread is blocked in a read (a silent pipe): that thread is left behind, its items
  unclosed (nothing may wait for it). It is not a daemon: at interpreter shutdown a
  daemon thread holding stdin's lock made Python abort ("could not acquire lock for
  <stdin>"). The command line leaves without waiting for it (`left_reading`,
  engine/cli/main.py `entry`); a library caller's interpreter waits for its read to end.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from typing import Generic, TypeVar

T = TypeVar("T")

#: How long `close` waits for a thread that is between two reads to end.
_JOIN_S = 1.0
THREAD_NAME = "adbatch-input"


def left_reading(wait: float = 0.2) -> bool:
    """Whether a read-ahead thread is still blocked in a read (a silent pipe), after
    giving each up to `wait` seconds to end."""
    threads = [t for t in threading.enumerate() if t.name == THREAD_NAME]
    for thread in threads:
        thread.join(wait)
    return any(thread.is_alive() for thread in threads)


class ReadAhead(Generic[T]):
    """`items` read on a thread; `await take(n)`: up to n items, [] at their end."""

    def __init__(self, items: Iterator[T], ahead: int) -> None:
        self._items = items
        self._ahead = max(1, ahead)
        self._buffer: deque[T] = deque()
        self._loop = asyncio.get_running_loop()
        self._room = threading.Condition()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._stopping = False
        self._reading = False
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=False)
        self._thread.start()

    # -- the reading thread

    def _run(self) -> None:
        items, buffer, ahead = self._items, self._buffer, self._ahead
        try:
            while not self._stopping:
                self._reading = True
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self._reading = False
                buffer.append(item)  # deque: append and popleft are atomic
                if self._waiter is not None:
                    self._wake()
                if len(buffer) >= ahead:
                    with self._room:
                        while len(buffer) >= ahead and not self._stopping:
                            self._room.wait()
        except BaseException as exc:  # the consumer raises it, after the items before it
            self._error = exc
        finally:
            if self._stopping:  # stopped early: the items' files close here, not at GC
                close = getattr(items, "close", None)
                if close is not None:
                    with suppress(Exception):
                        close()
            self._ended = True
            self._wake()

    def _wake(self) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the loop's side

    async def take(self, size: int) -> list[T]:
        """Up to `size` items, as soon as there is one; [] when the items are done."""
        buffer = self._buffer
        while True:
            if buffer:
                batch = [buffer.popleft() for _ in range(min(size, len(buffer)))]
                if len(buffer) < self._ahead:
                    with self._room:
                        self._room.notify()
                return batch
            if self._ended:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                return []
            self._waiter = waiter = self._loop.create_future()
            # Looked at again once the waiter is set: an item put in between woke nobody.
            if buffer or self._ended:
                self._waiter = None
                continue
            try:
                await waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Stop reading; the thread closes the items, waited for unless it is blocked
        in a read (module rules)."""
        self._stopping = True
        with self._room:
            self._room.notify_all()
        if not self._reading:
            self._thread.join(_JOIN_S)
