"""The consumer's broker client: declare the topology, consume, ack, dead-letter, retry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import aio_pika
import aio_pika.exceptions
import aiormq.abc
import structlog
from aio_pika.abc import AbstractQueue, AbstractRobustChannel, AbstractRobustConnection

from consumer.broker.amqp import (
    CLOSE_GRACE,
    close_connection,
    connect_confirming,
    copy_of,
    probe_channel,
    translated_errors,
)
from consumer.broker.decoding import Trust
from consumer.broker.deliveries import MessageHandler, Receipt, incoming_of, plan_acks
from consumer.broker.headers import retry_headers
from consumer.errors import BrokerUnavailableError, NotConnectedError
from consumer.incoming import Incoming
from consumer.lifecycle import AsyncResource
from consumer.redaction import redact
from consumer.topology import Topology

log = structlog.get_logger("consumer")

# Seconds a pause or resume of the subscription may take before it is left for the next try.
FLOW_TIMEOUT: Final = 10.0


class Broker(AsyncResource):
    """A robust connection with one confirming channel: consume, dead-letter, retry, ack."""

    def __init__(self, url: str, *, topology: Topology, heartbeat: int | None = None) -> None:
        """Prepare a broker client for `url`; `connect()` (or `async with`) connects.

        `heartbeat`: seconds between heartbeats, unless the URL sets its own; None, the client's
        default (60).
        """
        self._url = url
        self._heartbeat = heartbeat
        self.topology = topology
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._events_tag: str | None = None
        self._transit_tag: str | None = None
        self._handler: MessageHandler | None = None
        self._transit = False
        self._prefetch = 1
        self._trust = Trust(dead_letter_exchange=topology.dead_letter_exchange)
        # Deliveries stopped on purpose (too many bytes in hand), until resume().
        self._paused = False
        # Delivery tags handed to us and not yet acked, on the channel that delivered them, and
        # the same by subscription (consumer tag).
        self._outstanding: set[int] = set()
        self._by_subscription: dict[str, set[int]] = {}
        self._quiet = asyncio.Event()
        self._delivering_channel: object = None

    async def connect(self) -> None:
        """Open the connection and a channel with publisher confirms."""
        self._connection, self._channel = await connect_confirming(
            self._url, heartbeat=self._heartbeat
        )
        # The client reconnects by itself; these say so in the log, one line each way.
        self._connection.close_callbacks.add(self._on_lost)
        self._connection.reconnect_callbacks.add(self._on_restored)

    async def _begin(self) -> None:
        await self.connect()

    def _on_lost(self, _connection: object, exc: BaseException | None) -> None:
        if self._connection is not None and exc is not None:  # not our own close()
            detail = redact(str(exc)) or type(exc).__name__
            log.warning("broker connection lost; reconnecting", error=detail)

    def _on_restored(self, _connection: object) -> None:
        log.info("broker connection restored")

    async def close(self, *, grace: float = CLOSE_GRACE) -> None:
        """Close the connection; after `grace` seconds, stop waiting for the broker's reply."""
        # Forget the channel too: a broker used after close() is a bug, not an outage.
        self._channel = self._queue = None
        self._events_tag = self._transit_tag = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await close_connection(connection, grace=grace)

    @property
    def channel(self) -> AbstractRobustChannel:
        """The open channel; using a broker before `connect()` is a bug."""
        if self._channel is None:
            raise NotConnectedError("the broker is not connected")
        return self._channel

    @property
    def broker_version(self) -> str:
        """The RabbitMQ version the connection reported, such as "3.10.8"."""
        if self._connection is None or self._connection.transport is None:
            raise NotConnectedError("the broker is not connected")
        version = self._connection.transport.connection.server_properties.get("version")
        if isinstance(version, bytes):
            version = version.decode("utf-8", "replace")
        return version if isinstance(version, str) else ""

    async def declare(self) -> None:
        """Declare the exchanges and queues, idempotently; the same arguments every time."""
        t = self.topology
        with translated_errors():
            channel = self.channel
            exchange = await channel.declare_exchange(
                t.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await self._declare_dead_letter_exchange()
            self._queue = await channel.declare_queue(
                t.queue, durable=True, arguments=t.queue_arguments()
            )
            await self._queue.bind(exchange, "history.#")
            dead = await self._declare_dead_letter_queue()
            await dead.bind(t.dead_letter_exchange, "#")
            await channel.declare_queue(
                t.retry_queue, durable=True, arguments=t.retry_queue_arguments()
            )

    async def _declare_dead_letter_exchange(self) -> None:
        """The dead-letter exchange: internal, or an existing one used as it is, with a warning.

        Internal, a client's publish to it is refused (403 ACCESS_REFUSED) instead of landing
        among the dead letters as if it were one; the broker's own dead-lettering into it works
        the same. `internal` can't change once the exchange exists: one declared by an earlier
        release is used as it is (declaring it anew would fail with 406, and deleting it would
        open a window for the broker's dead letters), and the log says how to change it.
        """
        assert self._connection is not None  # noqa: S101  # declare() runs connected
        name = self.topology.dead_letter_exchange
        async with probe_channel(self._connection) as probe:
            try:
                await probe.exchange_declare(
                    name, exchange_type="topic", durable=True, internal=True
                )
            except aio_pika.exceptions.ChannelPreconditionFailed:
                pass  # it exists, declared otherwise: checked below, on the real channel
            else:
                return
        # Declared as earlier releases did: a 406 here means another type or durability. Not
        # declared again at a reconnect (robust=False): it may have been made internal since.
        await self.channel.declare_exchange(
            name, aio_pika.ExchangeType.TOPIC, durable=True, robust=False
        )
        log.warning(
            "the dead-letter exchange is not internal, so a publish to it by mistake is taken"
            " as a dead letter; to make it internal: stop the consumers, delete the exchange,"
            " run `task-history migrate` (docs/operating.md, 'RabbitMQ topology')",
            exchange=name,
        )

    async def _declare_dead_letter_queue(self) -> AbstractQueue:
        """The dead-letter queue as it is, or declared anew with this broker's arguments.

        A queue's arguments can't change once it exists: one declared by an earlier release
        (with no delivery limit) is used as it is, and docs/operating.md ("RabbitMQ topology")
        says how to give it the limit.
        """
        assert self._connection is not None  # noqa: S101  # declare() runs connected
        name = self.topology.dead_letter_queue
        async with probe_channel(self._connection) as probe:
            try:
                await probe.queue_declare(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return await self.channel.declare_queue(
                    name,
                    durable=True,
                    arguments=self.topology.dead_letter_queue_arguments(),
                )
        return await self.channel.declare_queue(name, passive=True)

    async def waiting(self) -> int:
        """How many messages wait in the events queue, ready to be delivered (not the unacked).

        A passive declare on a throwaway channel: the consuming channel is never at risk. On a
        broker node cut off from the queue's leader, or over a frozen connection, it does not
        answer: the caller bounds the wait.
        """
        if self._connection is None:
            raise NotConnectedError("the broker is not connected")
        async with probe_channel(self._connection) as probe:
            with translated_errors():
                declared = await probe.queue_declare(self.topology.queue, passive=True)
        return int(declared.message_count or 0)

    async def delete(self) -> None:
        """Delete the exchanges and queues, messages and all (tests and teardown only)."""
        t = self.topology
        with translated_errors():
            for queue in (t.queue, t.dead_letter_queue, t.retry_queue):
                await self.channel.queue_delete(queue)
            for exchange in (t.exchange, t.dead_letter_exchange):
                await self.channel.exchange_delete(exchange)

    async def consume(
        self,
        handler: MessageHandler,
        *,
        prefetch: int,
        transit: bool = False,
        trust: Trust | None = None,
    ) -> None:
        """Start delivering messages of the main queue to `handler`, `prefetch` unacked at most.

        With `transit`, the dead-letter queue's messages (what the broker dead-lettered itself)
        go to it too, marked as such. Each delivery is decoded with `trust` (this deployment's
        key, the retention); without one, none of the consumer's own headers is believed. The
        subscriptions are made on the client's own channel (see consumer.broker.deliveries)
        and made again each time the robust channel reopens after a reconnect.
        """
        if self._queue is None:
            await self.declare()
        self._handler = handler
        self._transit = transit
        self._prefetch = prefetch
        if trust is not None:
            self._trust = trust
        with translated_errors():
            await self.channel.set_qos(prefetch_count=prefetch)  # kept, and restored, by aio-pika
            await self._subscribe(self.channel)
        self.channel.reopen_callbacks.add(self._subscribe)

    async def _subscribe(self, _channel: object) -> None:
        """Subscribe on the open channel (also the robust channel's reopen callback).

        On a new channel nothing is in hand any more (it will all be delivered again), so a
        pause is over.
        """
        if self._handler is None:  # cancelled meanwhile
            return
        self._paused = False
        self._events_tag = await self._consume_events()
        self._transit_tag = None
        if self._transit:
            underlay = await self.channel.get_underlay_channel()
            ok = await underlay.basic_consume(
                self.topology.dead_letter_queue, self._deliver_transit, no_ack=False
            )
            self._transit_tag = str(ok.consumer_tag)

    async def _consume_events(self) -> str:
        underlay = await self.channel.get_underlay_channel()
        ok = await underlay.basic_consume(self.topology.queue, self._deliver, no_ack=False)
        return str(ok.consumer_tag)

    async def _deliver(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        if self._handler is not None:
            await self._handler(self._received(delivered, transit=False))

    async def _deliver_transit(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        if self._handler is not None:
            await self._handler(self._received(delivered, transit=True))

    def _received(self, delivered: aiormq.abc.DeliveredMessage, *, transit: bool) -> Incoming:
        """A delivery decoded, its tag noted as outstanding on the channel that delivered it."""
        message = incoming_of(delivered, trust=self._trust, transit=transit)
        receipt = message.receipt
        assert isinstance(receipt, Receipt)  # noqa: S101  # incoming_of makes one
        if receipt.channel is not self._delivering_channel:
            # A new channel after a reconnect: tags restart, the old ones are void.
            self._delivering_channel = receipt.channel
            self._outstanding = set()
            self._by_subscription = {}
        tag = receipt.delivery_tag
        if tag is not None:
            self._outstanding.add(tag)
            consumer_tag = str(getattr(delivered.delivery, "consumer_tag", ""))
            self._by_subscription.setdefault(consumer_tag, set()).add(tag)
            if consumer_tag == self._events_tag and self.quiet:
                self._quiet.set()
        return message

    @property
    def quiet(self) -> bool:
        """Whether nothing can be on its way from the events queue.

        So when there is no subscription to it, or as many of its deliveries are in hand,
        unacked, as the prefetch allows. Only then is cancelling the subscription harmless: a
        cancel while deliveries are on their way sends them back to the queue, out of order and
        counted as delivered again (towards the delivery limit).
        """
        if self._paused or self._events_tag is None:
            return True
        return len(self._by_subscription.get(self._events_tag, ())) >= self._prefetch

    async def until_quiet(self, *, within: float) -> bool:
        """Wait up to `within` seconds for `quiet`; whether it is."""
        if self.quiet:
            return True
        self._quiet.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._quiet.wait()
        return self.quiet

    async def pause(self) -> None:
        """Take no more deliveries from the events queue until `resume()`.

        What was delivered stays in hand, unacked. Call it when `quiet`: cancelling while
        deliveries are on their way sends them back to the queue. The dead-letter queue's
        subscription is left as it is.
        """
        if self._paused or self._events_tag is None:
            return
        tag, self._events_tag = self._events_tag, None
        self._paused = True
        with translated_errors():
            underlay = await self.channel.get_underlay_channel()
            async with asyncio.timeout(FLOW_TIMEOUT):
                await underlay.basic_cancel(tag)

    async def resume(self) -> None:
        """Take deliveries again after `pause()`, with the prefetch last set."""
        if not self._paused or self._handler is None:
            return
        with translated_errors():
            async with asyncio.timeout(FLOW_TIMEOUT):
                await self.channel.set_qos(prefetch_count=self._prefetch)
                self._events_tag = await self._consume_events()
        self._paused = False

    @property
    def paused(self) -> bool:
        """Whether deliveries are stopped on purpose (see `pause`)."""
        return self._paused

    async def set_prefetch(self, count: int) -> None:
        """Let the broker send `count` messages of the events queue ahead from now on.

        A prefetch applies to subscriptions made after it: the events queue's is cancelled
        (what it delivered stays in hand) and made again, so call it when `quiet`. While
        paused, it is what `resume()` subscribes with.
        """
        self._prefetch = count
        if self._paused or self._events_tag is None or self._handler is None:
            return
        tag, self._events_tag = self._events_tag, None
        with translated_errors():
            underlay = await self.channel.get_underlay_channel()
            async with asyncio.timeout(FLOW_TIMEOUT):
                await underlay.basic_cancel(tag)
                await self.channel.set_qos(prefetch_count=count)  # also what a reconnect restores
                self._events_tag = await self._consume_events()

    @property
    def consuming(self) -> bool:
        """Whether the subscription is on (or paused on purpose) and its channel open.

        False while reconnecting.
        """
        return (
            (self._events_tag is not None or self._paused)
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def cancel(self) -> None:
        """Stop deliveries; returns when the broker has confirmed that no more will come."""
        self._handler = None
        self._paused = False
        tags = [tag for tag in (self._events_tag, self._transit_tag) if tag is not None]
        self._events_tag = self._transit_tag = None
        if tags:
            with translated_errors():
                underlay = await self.channel.get_underlay_channel()
                for tag in tags:
                    await underlay.basic_cancel(tag)

    async def ack(self, messages: Sequence[Incoming]) -> int:
        """Ack messages, in one frame where that is safe; return how many could not be acked.

        A message from a channel that has since closed can't be acked: the broker redelivers
        it, and the idempotent insert absorbs the copy.
        """
        live = self._live(messages)
        by_tag = {r.delivery_tag: r for r in live if r.delivery_tag is not None}
        multiple, singles = plan_acks(list(by_tag), outstanding=list(self._outstanding))
        try:
            with translated_errors():
                if multiple is not None:
                    await by_tag[multiple].ack(multiple=True)
                for tag in singles:
                    await by_tag[tag].ack()
        except BrokerUnavailableError:
            return len(messages)
        self._outstanding.difference_update(by_tag)
        for tags in self._by_subscription.values():
            tags.difference_update(by_tag)
        return len(messages) - len(live)

    def holds_any(self, messages: Sequence[Incoming]) -> bool:
        """Whether any of `messages` can still be acked: delivered on the channel open now."""
        return bool(self._live(messages))

    def _live(self, messages: Sequence[Incoming]) -> list[Receipt]:
        receipts = [message.receipt for message in messages]
        return [
            receipt
            for receipt in receipts
            if isinstance(receipt, Receipt)
            and receipt.channel is self._delivering_channel
            and not receipt.channel.is_closed
            and receipt.delivery_tag is not None
        ]

    async def retry_later(
        self,
        message: Incoming,
        *,
        delay: float,
        waiting_since: datetime | None = None,
        refused_since: datetime | None = None,
    ) -> None:
        """Park a copy in the retry queue for `delay` seconds; wait for the confirm.

        The copy carries the consumer's own headers (when it was first received, its window,
        its first routing key), signed so that they are believed when it comes back.
        """
        headers = retry_headers(
            message.headers,
            routing_key=message.routing_key,
            received_at=message.received_at,
            retry_count=message.retry_count,
            waiting_since=waiting_since,
            refused_since=refused_since,
            message_id=message.message_id,
        )
        if self._trust.signer is not None:
            headers = self._trust.signer.sign(headers, body=message.body.data)
        copy = copy_of(message, headers, expiration=delay)
        with translated_errors():
            await self.channel.default_exchange.publish(copy, routing_key=self.topology.retry_queue)
