"""Batching decisions: when a batch is ready. No I/O."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items waiting to be written, handed out in batches.

    A batch is ready when it holds `max_size` items, or when its first item has waited
    `max_wait` seconds: full batches under load, low latency when traffic is light. Putting is
    synchronous and cheap, since it runs once per delivered message.
    """

    def __init__(self, *, max_size: int, max_wait: float) -> None:
        """Hand out at most `max_size` items at a time, the first after `max_wait` seconds."""
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._max_size = max_size
        self._max_wait = max_wait
        self._items: list[T] = []
        self._first_at = 0.0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._interrupted = False

    def __len__(self) -> int:
        """How many items wait."""
        return len(self._items)

    def put(self, item: T) -> None:
        """Add an item; it goes out in arrival order."""
        if not self._items:
            self._first_at = asyncio.get_running_loop().time()
            self._arrived.set()
        self._items.append(item)
        if len(self._items) >= self._max_size:
            self._full.set()

    async def take(self) -> list[T]:
        """Wait for the next batch: full, or its first item `max_wait` old, or interrupted."""
        while not self._items and not self._interrupted:
            self._arrived.clear()
            await self._arrived.wait()
        if self._items and len(self._items) < self._max_size and not self._interrupted:
            delay = self._first_at + self._max_wait - asyncio.get_running_loop().time()
            if delay > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._full.wait()
        return self.take_nowait()

    def take_nowait(self) -> list[T]:
        """The next batch as it stands now, possibly empty."""
        batch, self._items = self._items[: self._max_size], self._items[self._max_size :]
        if self._items:
            # What is left arrived while this batch filled: its clock starts now.
            self._first_at = asyncio.get_running_loop().time()
        else:
            self._full.clear()
        return batch

    def interrupt(self) -> None:
        """Make `take` return at once from now on, with whatever is there."""
        self._interrupted = True
        self._arrived.set()
        self._full.set()
