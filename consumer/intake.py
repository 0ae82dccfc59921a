"""The subscription kept in line with the bytes in hand: paused, resumed, its prefetch fitted.

The inbox counts the bytes (consumer.batcher), PrefetchBySize says how many messages may be in
flight (consumer.flow); this keeps the broker's subscription to what they say, one change at a
time, in a task of its own so that a delivery or a batch never waits for the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from consumer.errors import BrokerError
from consumer.flow import PrefetchBySize
from consumer.metrics import Metrics
from consumer.shutdown import Shutdown

log = structlog.get_logger("consumer")


class Subscription(Protocol):
    """What is asked of the broker's subscription."""

    async def pause(self) -> None:
        """Take no more deliveries for now."""

    async def resume(self) -> None:
        """Take deliveries again."""

    async def set_prefetch(self, count: int) -> None:
        """Let the broker send `count` messages ahead from now on."""

    @property
    def paused(self) -> bool:
        """Whether deliveries are stopped on purpose."""


class Holding(Protocol):
    """What is asked of the messages in hand: their bytes, against the two marks."""

    @property
    def held_bytes(self) -> int:
        """Bytes held."""

    @property
    def full(self) -> bool:
        """Over the high mark."""

    @property
    def roomy(self) -> bool:
        """Under the low mark."""


class Intake:
    """Pauses the subscription over the high mark, resumes it under the low, fits its prefetch."""

    def __init__(  # what it watches and what it changes, each by name
        self,
        *,
        subscription: Subscription,
        inbox: Holding,
        prefetch: PrefetchBySize,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> None:
        """Keep `subscription` in line with `inbox`'s bytes and `prefetch`."""
        self._subscription = subscription
        self._inbox = inbox
        self._prefetch = prefetch
        self._metrics = metrics
        self._shutdown = shutdown
        self._task: asyncio.Task[None] | None = None
        self._due = asyncio.Event()

    def nudge(self) -> None:
        """Have the subscription looked at again, soon, in the background."""
        if self._shutdown.begun:
            return
        self._due.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._keep())

    async def settle(self) -> None:
        """Let a change under way finish (before the subscription is cancelled)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, BrokerError):
                await self._task

    async def close(self) -> None:
        """Stop looking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep(self) -> None:
        """Bring the subscription in line, one change at a time.

        Whatever changed while a change was under way is looked at again right after it, so a
        resume is never lost behind a pause.
        """
        subscription, inbox = self._subscription, self._inbox
        while self._due.is_set() and not self._shutdown.begun:
            self._due.clear()
            try:
                if inbox.full and not subscription.paused:
                    await subscription.pause()
                    log.warning(
                        "messages in hand over the byte budget; taking no more deliveries until"
                        " they are written",
                        bytes_in_hand=inbox.held_bytes,
                    )
                elif subscription.paused and inbox.roomy:
                    await subscription.resume()
                    log.info("taking deliveries again", bytes_in_hand=inbox.held_bytes)
                elif (count := self._prefetch.change()) is not None:
                    await subscription.set_prefetch(count)
                    log.info("prefetch fitted to the size of the messages", prefetch=count)
                    self._prefetch.current = count
            except BrokerError as exc:  # the connection is being made again: it resubscribes
                log.warning("changing the subscription failed", error=str(exc))
            self._metrics.paused.set(1 if subscription.paused else 0)
