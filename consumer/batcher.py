"""Batching decisions: when a batch is ready. No I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
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

    Memory is counted in bytes (`size_of` an item): `held_bytes` is what was put and not yet
    `release`d, in the inbox or handed out; `full` says it passed `high_bytes` (the consumer
    then takes no more deliveries), `roomy` that it is back under `low_bytes`. A batch holds
    at most `max_batch_bytes` (and always at least one item).
    """

    def __init__(  # noqa: PLR0913  # the count, time and byte limits, each by name
        self,
        *,
        max_size: int,
        max_wait: float,
        size_of: Callable[[T], int] = lambda _item: 0,
        high_bytes: int = 1 << 62,
        low_bytes: int = 0,
        max_batch_bytes: int = 1 << 62,
    ) -> None:
        """Hand out at most `max_size` items at a time, growing a batch for `max_wait` at most."""
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if not 0 <= low_bytes < high_bytes:
            raise ValueError("low_bytes must be below high_bytes")
        self._max_size = max_size
        self._max_wait = max_wait
        self._size_of = size_of
        self._high_bytes = high_bytes
        self._low_bytes = low_bytes
        self._max_batch_bytes = max(1, max_batch_bytes)
        self.held_bytes = 0
        # Bytes of the items in the inbox itself (not handed out yet).
        self._waiting_bytes = 0
        self._items: list[T] = []
        self._first_at = 0.0
        self._arrived = asyncio.Event()
        self._interrupted = False
        # Whether the last batch went out full: then the next one waits to fill (see _grow).
        self._loaded = False

    def __len__(self) -> int:
        """How many items wait."""
        return len(self._items)

    @property
    def full(self) -> bool:
        """Whether the bytes held passed the high mark: take no more for now."""
        return self.held_bytes >= self._high_bytes

    @property
    def roomy(self) -> bool:
        """Whether the bytes held are under the low mark: take deliveries again."""
        return self.held_bytes <= self._low_bytes

    def put(self, item: T) -> None:
        """Add an item; it goes out in arrival order."""
        if not self._items:
            self._first_at = asyncio.get_running_loop().time()
            self._arrived.set()
        self._items.append(item)
        size = self._size_of(item)
        self.held_bytes += size
        self._waiting_bytes += size

    def release(self, items: Iterable[T]) -> None:
        """Items handed out are done with (acked, or left for redelivery): their bytes go."""
        self.held_bytes -= sum(self._size_of(item) for item in items)

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
        while (
            count < self._max_size
            and self._waiting_bytes < self._max_batch_bytes
            and not self._interrupted
            and loop.time() < deadline
        ):
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
        count = self._fitting()
        if count == len(self._items) and count < self._max_size:
            batch, self._items = self._items, []
            self._waiting_bytes = 0
            self._loaded = False
            return batch
        self._loaded = True
        batch, self._items = self._items[:count], self._items[count:]
        self._waiting_bytes -= sum(self._size_of(item) for item in batch)
        if self._items:
            # What is left arrived while this batch filled: its clock starts now.
            self._first_at = asyncio.get_running_loop().time()
        return batch

    def _fitting(self) -> int:
        """How many of the first items make the next batch: max_size, and max_batch_bytes."""
        count = min(len(self._items), self._max_size)
        if self._waiting_bytes < self._max_batch_bytes:
            return count
        total = 0
        for taken, item in enumerate(self._items[:count]):
            total += self._size_of(item)
            if total > self._max_batch_bytes:
                return max(1, taken)
        return count

    def interrupt(self) -> None:
        """Make `take` return at once from now on, with whatever is there."""
        self._interrupted = True
        self._arrived.set()
