"""Batching decisions: when a batch is ready. No I/O."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")

# Event-loop turns in a row that bring no new item before a growing batch stops waiting. A
# delivery read from the socket takes a few turns to reach the inbox (the connection's reader,
# the channel's reader, then the delivery's own task), so one empty turn is not yet a lull.
QUIET_TURNS = 3
# Under load (the last batch went out full), how often a growing batch looks again once
# deliveries pause: a full batch is worth a few milliseconds when the queue holds a backlog.
LOADED_POLL_SECONDS = 0.001


class Inbox(Generic[T]):
    """Items waiting to be written, handed out in batches, sized by what is waiting.

    No clock decides when a batch goes: `take` hands one out as soon as something is in hand
    and deliveries stop coming in. While the writer is busy with a batch, what arrives waits
    and makes the next one, so batches grow with the load and shrink with it. When the writer
    asks and finds items in hand, it lets the event loop run while new items keep arriving
    (those already read from the socket, or a burst), and stops once `QUIET_TURNS` turns bring
    none, the batch holds `max_size` items, or its first item has waited `max_wait` seconds.
    Idle, the first item goes out after a few turns: no fixed wait. Under load (the last batch
    went out full, as when draining a backlog) a pause in deliveries does not end the batch: it
    waits to fill, within the same caps, since full batches are what a backlog drains fastest.

    Putting is synchronous and cheap, since it runs once per delivered message.
    """

    def __init__(self, *, max_size: int, max_wait: float) -> None:
        """Hand out at most `max_size` items at a time, growing a batch for `max_wait` at most."""
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._max_size = max_size
        self._max_wait = max_wait
        self._items: list[T] = []
        self._first_at = 0.0
        self._arrived = asyncio.Event()
        self._interrupted = False
        # Whether the last batch went out full: then the next one waits to fill (see _grow).
        self._loaded = False

    def __len__(self) -> int:
        """How many items wait."""
        return len(self._items)

    def put(self, item: T) -> None:
        """Add an item; it goes out in arrival order."""
        if not self._items:
            self._first_at = asyncio.get_running_loop().time()
            self._arrived.set()
        self._items.append(item)

    async def take(self) -> list[T]:
        """Wait for something in hand, let the batch grow while items keep coming, return it.

        Returns at once, with whatever is there (perhaps nothing), once interrupted.
        """
        while not self._items and not self._interrupted:
            self._arrived.clear()
            await self._arrived.wait()
        await self._grow()
        return self.take_nowait()

    async def _grow(self) -> None:
        """Yield to the event loop while new items keep arriving, within the caps."""
        loop = asyncio.get_running_loop()
        deadline = self._first_at + self._max_wait
        count = len(self._items)
        quiet = 0
        while count < self._max_size and not self._interrupted and loop.time() < deadline:
            if quiet < QUIET_TURNS:
                await asyncio.sleep(0)
            elif self._loaded:
                await asyncio.sleep(LOADED_POLL_SECONDS)
            else:
                break
            if len(self._items) > count:
                count = len(self._items)
                quiet = 0
            else:
                quiet += 1

    def take_nowait(self) -> list[T]:
        """The next batch as it stands now, possibly empty."""
        if len(self._items) < self._max_size:
            batch, self._items = self._items, []
            self._loaded = False
            return batch
        self._loaded = True
        if len(self._items) == self._max_size:
            batch, self._items = self._items, []
            return batch
        batch, self._items = self._items[: self._max_size], self._items[self._max_size :]
        # What is left arrived while this batch filled: its clock starts now.
        self._first_at = asyncio.get_running_loop().time()
        return batch

    def interrupt(self) -> None:
        """Make `take` return at once from now on, with whatever is there."""
        self._interrupted = True
        self._arrived.set()
