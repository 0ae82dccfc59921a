"""A graceful stop: whether one has begun, its deadline, and the waits it cuts short."""

from __future__ import annotations

import asyncio
import contextlib


class Shutdown:
    """The consumer's stop, shared by the parts that wait: start-up, batch retries, the drain.

    Before a stop, waits last as long as asked but end at once when it begins; after it, no
    wait runs past the deadline.
    """

    def __init__(self) -> None:
        """Not stopping yet; no deadline."""
        self._stopping = asyncio.Event()
        self.deadline = float("inf")

    @property
    def begun(self) -> bool:
        """Whether a stop was asked for."""
        return self._stopping.is_set()

    def begin(self, *, timeout: float) -> None:
        """Start stopping now, with `timeout` seconds to finish; a second call changes nothing."""
        if not self.begun:
            self.deadline = asyncio.get_running_loop().time() + timeout
            self._stopping.set()

    def too_late(self, delay: float) -> bool:
        """Whether waiting `delay` more seconds would pass the deadline of a stop under way."""
        return self.begun and asyncio.get_running_loop().time() + delay > self.deadline

    async def pause(self, seconds: float) -> None:
        """Sleep; cut short when a stop begins, and never past the deadline of one under way."""
        if self.begun:
            remaining = self.deadline - asyncio.get_running_loop().time()
            await asyncio.sleep(max(0.0, min(seconds, remaining)))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
