"""The feed's items for the workers: whole batches in, one item out.

Rules:
- The feed puts the batches it reads (256 items, read on a thread) in one piece; a
  worker pops one item at a time, a plain `deque.popleft` while there are any. Only an
  empty queue (a worker) or a full one (the feed) waits, on asyncio's own futures: no
  anyio call per item (anyio's stream costs a checkpoint, an Event and a task look-up per
  waiting receive). The engine runs on anyio's asyncio backend only (uvloop or not), so
  these futures are cancelled by anyio's scopes like any other await.
- Bounded: `put` waits while `capacity` items or more are queued, so memory depends on
  the concurrency and the batch size, never on the input size.
- `close` ends the queue: the workers take what is left, then `get` gives None.
- `--ordered` bounds the events between the feed and the writer by a window (`admit`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

import anyio

from engine.core.events import Item

T = TypeVar("T")


class BatchQueue(Generic[T]):
    """Items put in batches, taken one by one; see the module's rules."""

    __slots__ = ("_capacity", "_getters", "_items", "_loop", "_putters", "closed")

    def __init__(self, capacity: int) -> None:
        self._items: deque[T] = deque()
        self._capacity = max(1, capacity)
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._loop = asyncio.get_running_loop()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, batch: list[T]) -> None:
        """Queue `batch`, once fewer than `capacity` items wait (then all of it at once)."""
        while len(self._items) >= self._capacity and not self.closed:
            putter = self._loop.create_future()
            self._putters.append(putter)
            await putter
        if self.closed:
            return
        self._items.extend(batch)
        self._wake(len(batch))

    def offer(self, item: T) -> bool:
        """Queue `item` now when there is room (False: `put` it, waiting)."""
        if len(self._items) >= self._capacity or self.closed:
            return False
        self._items.append(item)
        if self._getters:
            self._wake(1)
        return True

    def take(self, most: int) -> list[T]:
        """Up to `most` queued items, without waiting."""
        items = self._items
        popleft = items.popleft
        taken = [popleft() for _ in range(min(most, len(items)))]
        if self._putters and len(items) * 2 <= self._capacity:
            self._wake_putters()
        return taken

    def pop(self) -> T | None:
        """The next item now, or None when there is none queued."""
        items = self._items
        if not items:
            return None
        item = items.popleft()
        # Wake the feed at half capacity, not at each pop: one wake-up per half batch.
        if self._putters and len(items) * 2 <= self._capacity:
            self._wake_putters()
        return item

    async def get(self) -> T | None:
        """The next item, waiting for one; None once the queue is closed and empty."""
        while not self._items:
            if self.closed:
                return None
            waiter = self._loop.create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Woken, then cancelled before it ran: hand the wake-up on.
                if waiter.done() and not waiter.cancelled():
                    self._wake(len(self._items))
                raise
        return self.pop()

    def close(self) -> None:
        """No more batches: every waiting worker wakes (and ends when nothing is left)."""
        self.closed = True
        self._wake(len(self._getters))
        self._wake_putters()

    def _wake_putters(self) -> None:
        putters = self._putters
        while putters:
            putter = putters.popleft()
            if not putter.done():
                putter.set_result(None)

    def _wake(self, count: int) -> None:
        getters = self._getters
        while count > 0 and getters:
            waiter = getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1


async def admit(
    batch: list[Item], window: anyio.Semaphore, fed: deque[int], queue: BatchQueue[Item]
) -> list[Item]:
    """--ordered: a window slot per item, its seq appended to `fed`; what remains to be
    queued. The items admitted are queued before the feed waits for a slot: the oldest
    unanswered event, which the writer waits for, may be among them."""
    start = 0
    for i, item in enumerate(batch):
        try:
            window.acquire_nowait()
        except anyio.WouldBlock:
            await queue.put(batch[start:i])
            start = i
            await window.acquire()
        fed.append(item.seq)
    return batch[start:]
