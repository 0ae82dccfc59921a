"""A graceful stop: whether one has begun, its deadline, and the waits it cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys

import structlog

log = structlog.get_logger("consumer")


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


def exit_if_stuck(*, after: float) -> asyncio.TimerHandle:
    """In `after` seconds unless cancelled: log where every task waits, and exit with status 1.

    For a process's own stop, once it has begun: every wait of a stop has a bound, so a stop
    that outlasts them all waits somewhere none reaches, and would otherwise run until killed.
    """

    def give_up() -> None:
        stacks = []
        for task in asyncio.all_tasks():
            stack = io.StringIO()
            task.print_stack(file=stack)
            stacks.append(stack.getvalue())
        log.critical("the stop did not finish; exiting", seconds=after, tasks=stacks)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # what is stuck can't be awaited, nor unwound

    return asyncio.get_running_loop().call_later(after, give_up)
