"""A queue's messages held in order, each dropped, sent on or given back: the dead-letter tools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage

from consumer.broker.amqp import CLOSE_GRACE, close_connection, copy_message, translated_errors
from consumer.errors import DeadLetterQueueBusyError
from consumer.lifecycle import AsyncResource


class HeldQueue(AsyncResource):
    """A queue's messages taken in order and held, each then dropped, sent on or given back.

    Nothing is lost whatever happens to the process: a message is acked only once it is dropped
    on purpose or its copy is confirmed, and closing the connection (or the process dying)
    gives every other one back. A quorum queue puts returned messages back at its head in
    their order, so what is given back keeps its place. One holder at a time: an exclusive
    lock queue named after the queue keeps a second one out.
    """

    def __init__(self, url: str, *, queue: str, idle_timeout: float = 5.0) -> None:
        """Prepare to hold `queue`; a scan ends early after `idle_timeout` s without a message."""
        self._url = url
        self.queue = queue
        self._idle_timeout = idle_timeout
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self.size = 0

    async def _begin(self) -> None:
        """Connect, take the lock, and start taking the messages that are in the queue now."""
        with translated_errors():
            # A plain connection: after a reconnect, held messages would come again as new.
            self._connection = await aio_pika.connect(self._url)
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        assert self._connection is not None  # noqa: S101  # set by _begin
        with translated_errors():
            lock = await self._connection.channel()
            try:
                await lock.declare_queue(f"{self.queue}.lock", exclusive=True, auto_delete=True)
            except aiormq.exceptions.ChannelLockedResource:  # aio-pika doesn't re-export it
                raise DeadLetterQueueBusyError from None
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            source = await self._channel.declare_queue(self.queue, passive=True)
            self.size = source.declaration_result.message_count or 0
            if self.size:
                # No prefetch limit: every message is held until the work is done with it.
                await self._channel.set_qos(prefetch_count=0)
                await source.consume(self._arrive, no_ack=False)

    async def _arrive(self, message: AbstractIncomingMessage) -> None:
        self._arrived.put_nowait(message)

    async def close(self) -> None:
        """Give back every message not dropped or sent on, and disconnect."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await close_connection(connection, grace=CLOSE_GRACE)

    async def messages(self) -> AsyncIterator[AbstractIncomingMessage]:
        """The messages that were in the queue when the hold began, oldest first.

        Ends early if none comes for the idle timeout (another client took some).
        """
        # Messages that arrive later are held too, untouched, and given back in order.
        for _ in range(self.size):
            try:
                message = await asyncio.wait_for(self._arrived.get(), self._idle_timeout)
            except TimeoutError:
                return
            yield message

    async def drop(self, message: AbstractIncomingMessage) -> None:
        """Remove a held message from the queue for good."""
        with translated_errors():
            await message.ack()

    async def send(
        self,
        message: AbstractIncomingMessage,
        *,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """Publish a copy with `headers` to `exchange`, confirmed and routed; then drop it.

        Raises UnroutableError, leaving the message held, when no queue is bound for the key.
        """
        with translated_errors():
            target = await self._exchange(exchange)
            await target.publish(
                copy_message(message, headers), routing_key=routing_key, mandatory=True
            )
            await message.ack()

    async def _exchange(self, name: str) -> aio_pika.abc.AbstractExchange:
        assert self._channel is not None  # noqa: S101  # set while held
        if name not in self._exchanges:
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=True)
        return self._exchanges[name]
