"""The subscription kept in line with the bytes in hand: paused, resumed, its prefetch fitted.

The inbox counts the bytes (consumer.batcher), PrefetchBySize says how many messages may be in
flight (consumer.flow); this keeps the broker's subscription to what they say. A subscription is
cancelled (to pause it, or to change its prefetch) only when nothing can be on its way: a cancel
while deliveries are in transit sends them back to the queue, out of order and counted as
delivered once more. So those changes are made between two batches, when the broker has sent
all the prefetch allows and no ack has freed room since. Resuming is always safe, and is done in
the background as soon as the bytes in hand are under the low mark.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

import structlog

from consumer.errors import BrokerError
from consumer.flow import PrefetchBySize
from consumer.metrics import Metrics
from consumer.retry import backoff
from consumer.shutdown import Shutdown

log = structlog.get_logger("consumer")

# Seconds a change waits, between two batches, for the deliveries the last ack made room for:
# under a backlog they come within milliseconds, and then nothing more is on its way.
QUIET_WAIT: Final = 0.05
# Batches after a wait that found deliveries still on their way (a queue running dry) during
# which the next change is tried without waiting, so a trickle is not slowed down.
QUIET_BACKOFF: Final = 8


class Subscription(Protocol):
    """What is asked of the broker's subscription to the events queue."""

    async def pause(self) -> None:
        """Take no more deliveries for now."""

    async def resume(self) -> None:
        """Take deliveries again."""

    async def set_prefetch(self, count: int) -> None:
        """Let the broker send `count` messages ahead from now on."""

    async def until_quiet(self, *, within: float) -> bool:
        """Wait a little for nothing to be on its way; whether nothing is."""

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
        self._lock = asyncio.Lock()
        self._resuming: asyncio.Task[None] | None = None
        self._skip_waits = 0

    async def between_batches(self) -> None:
        """Pause over the high mark, or fit the prefetch, if nothing is on its way.

        Called before a batch is written: no ack has freed room since the last batch's.
        """
        subscription, inbox = self._subscription, self._inbox
        if subscription.paused or self._shutdown.begun:
            return
        count = self._prefetch.change()
        if not inbox.full and count is None:
            return
        wait = 0.0 if self._skip_waits else QUIET_WAIT
        self._skip_waits = max(0, self._skip_waits - 1)
        async with self._lock:
            if not await subscription.until_quiet(within=wait):
                if wait:
                    self._skip_waits = QUIET_BACKOFF
                return
            try:
                if inbox.full:
                    await subscription.pause()
                    log.warning(
                        "messages in hand over the byte budget; taking no more deliveries until"
                        " they are written",
                        bytes_in_hand=inbox.held_bytes,
                    )
                elif count is not None:
                    await self._fit(count)
            except BrokerError as exc:  # the connection is being made again: it resubscribes
                log.warning("changing the subscription failed", error=str(exc))
        self._metrics.paused.set(1 if subscription.paused else 0)

    def after_batch(self) -> None:
        """Resume in the background once the bytes in hand are under the low mark."""
        if (
            self._subscription.paused
            and self._inbox.roomy
            and not self._shutdown.begun
            and (self._resuming is None or self._resuming.done())
        ):
            self._resuming = asyncio.create_task(self._resume())

    async def close(self) -> None:
        """Stop resuming (the subscription is being cancelled)."""
        if self._resuming is not None and not self._resuming.done():
            self._resuming.cancel()
            await asyncio.wait([self._resuming])

    async def _resume(self) -> None:
        """Resume, with the prefetch fitted to what came, trying again until it is done."""
        attempt = 0
        while self._subscription.paused and not self._shutdown.begun:
            try:
                async with self._lock:
                    if (count := self._prefetch.change()) is not None:
                        await self._fit(count)  # recorded: resume() subscribes with it
                    await self._subscription.resume()
                log.info("taking deliveries again", bytes_in_hand=self._inbox.held_bytes)
            except BrokerError as exc:
                attempt += 1
                log.warning("taking deliveries again failed; retrying", error=str(exc))
                await self._shutdown.pause(backoff(attempt, cap=5))
        self._metrics.paused.set(1 if self._subscription.paused else 0)

    async def _fit(self, count: int) -> None:
        await self._subscription.set_prefetch(count)
        log.info("prefetch fitted to the size of the messages", prefetch=count)
        self._prefetch.current = count
