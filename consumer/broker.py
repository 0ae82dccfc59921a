"""RabbitMQ: the topology of contract §2, consuming, and confirmed dead-letter and retry copies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import aio_pika
import aio_pika.exceptions
import aiormq.abc
import aiormq.exceptions
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from consumer.errors import (
    BrokerError,
    BrokerUnavailableError,
    DeadLetterQueueBusyError,
    UnroutableError,
)
from consumer.events import ErrorCode
from consumer.logs import redact

log = structlog.get_logger("consumer")
T = TypeVar("T")

# Headers of contract §2, and the consumer's own for unknown-task retries.
ERROR = "x-error"
ERROR_DETAIL = "x-error-detail"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
FAILED_AT = "x-failed-at"
REPLAY_COUNT = "x-replay-count"
WAITING_SINCE = "x-unknown-task-since"
RECEIVED_AT = "x-received-at"
RETRY_COUNT = "x-retry-count"
# Headers the broker writes when it dead-letters or redelivers a message. A copy leaves them
# out: they describe the original's journey, and from 3.13 the broker refuses them from clients.
BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


@dataclass(frozen=True, slots=True)
class Topology:
    """The names of contract §2; each is a setting, so tests and environments can share a vhost."""

    exchange: str = "task_build_history"
    queue: str = "task_build_history.events"
    dead_letter_exchange: str = "task_build_history.dlx"
    dead_letter_queue: str = "task_build_history.dead"
    retry_queue: str = "task_build_history.retry"
    delivery_limit: int = 20

    @classmethod
    def named(cls, base: str, *, delivery_limit: int = 20) -> Topology:
        """Every name derived from one, as the defaults are: `base`, `base.events`, ..."""
        return cls(
            exchange=base,
            queue=f"{base}.events",
            dead_letter_exchange=f"{base}.dlx",
            dead_letter_queue=f"{base}.dead",
            retry_queue=f"{base}.retry",
            delivery_limit=delivery_limit,
        )

    def queue_arguments(self) -> dict[str, Any]:
        """The main queue: quorum, poison messages to the dead-letter exchange, never dropped."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            # at-least-once dead-lettering requires it: a full queue refuses, never drops.
            "x-overflow": "reject-publish",
        }

    def dead_letter_queue_arguments(self, *, broker_version: str) -> dict[str, Any]:
        """The dead-letter queue: quorum, and never a delivery limit.

        Looking at dead letters takes them and gives them back, which counts as a delivery.
        From RabbitMQ 4.0 a quorum queue declared without a limit gets one of 20, and this
        queue has nowhere to send a message past it: it would be dropped, so 4.x gets -1
        ("none"). 3.x has no default limit and reads -1 as "no delivery allowed".
        """
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if _major(broker_version) >= 4:  # noqa: PLR2004  # the release that added the default
            arguments["x-delivery-limit"] = -1
        return arguments

    def retry_queue_arguments(self) -> dict[str, Any]:
        """The retry queue: each message waits its own TTL, then goes back to the main queue."""
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


def _major(version: str) -> int:
    """The major number of a version string such as "3.10.8"; 0 when it has none."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


class MessageLike(Protocol):
    """What the header helpers and copies read of a message: aio-pika's, or a Received."""

    @property
    def body(self) -> bytes: ...  # noqa: D102  # a protocol's members are its attributes
    @property
    def headers(self) -> Mapping[str, Any] | None: ...  # noqa: D102
    @property
    def routing_key(self) -> str | None: ...  # noqa: D102
    @property
    def message_id(self) -> str | None: ...  # noqa: D102
    @property
    def content_type(self) -> str | None: ...  # noqa: D102
    @property
    def content_encoding(self) -> str | None: ...  # noqa: D102
    @property
    def priority(self) -> int | None: ...  # noqa: D102
    @property
    def correlation_id(self) -> str | None: ...  # noqa: D102
    @property
    def reply_to(self) -> str | None: ...  # noqa: D102
    @property
    def timestamp(self) -> datetime | None: ...  # noqa: D102
    @property
    def type(self) -> str | None: ...  # noqa: D102
    @property
    def app_id(self) -> str | None: ...  # noqa: D102


class _Property(Generic[T]):
    """A Received attribute read from its delivery's AMQP properties."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, message: Received, owner: type[Received]) -> T:
        return getattr(message._properties, self._name)  # type: ignore[no-any-return]  # noqa: SLF001  # the descriptor's own class


class Received:
    """A message the consumer received, read straight from the client's frames.

    aio-pika wraps every delivery in an IncomingMessage (every property copied through a
    checked attribute write) inside a second task of its own: on the consumer's hot path that
    costs a third of the time (a bare loop: 16,000 messages/s through aio-pika, 24,000 on
    aiormq's deliveries). Properties are read only when asked for.
    """

    __slots__ = ("_properties", "body", "channel", "delivery_tag", "routing_key")

    def __init__(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        """Wrap one delivery of a basic.consume."""
        self._properties = delivered.header.properties
        self.body: bytes = delivered.body
        self.channel: aiormq.abc.AbstractChannel = delivered.channel
        self.delivery_tag: int | None = getattr(delivered.delivery, "delivery_tag", None)
        self.routing_key: str | None = delivered.routing_key

    @property
    def headers(self) -> dict[str, Any]:
        """The message's headers (empty when it has none)."""
        return dict(self._properties.headers or {})

    # The AMQP properties, read from the frame when asked for; `type` is pamqp's message_type.
    message_id = _Property[str | None]("message_id")
    content_type = _Property[str | None]("content_type")
    content_encoding = _Property[str | None]("content_encoding")
    priority = _Property[int | None]("priority")
    correlation_id = _Property[str | None]("correlation_id")
    reply_to = _Property[str | None]("reply_to")
    timestamp = _Property[datetime | None]("timestamp")
    type = _Property[str | None]("message_type")
    app_id = _Property[str | None]("app_id")

    async def ack(self, *, multiple: bool = False) -> None:
        """Ack this delivery (and, with `multiple`, every earlier one on its channel)."""
        assert self.delivery_tag is not None  # noqa: S101  # basic.consume deliveries have one
        await self.channel.basic_ack(self.delivery_tag, multiple=multiple)


def routing_key(context_type: str) -> str:
    """The routing key an event is published with: `history.<context_type>`."""
    return f"history.{context_type}"


def header_text(value: object) -> str:
    """A header or property value as text: AMQP strings may arrive as bytes; others are ""."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def original_routing_key(message: MessageLike) -> str:
    """The key the message was first published with, even after a retry or a replay."""
    first = header_text((message.headers or {}).get(ORIGINAL_ROUTING_KEY))
    return first or message.routing_key or ""


def dead_letter_headers(
    headers: dict[str, Any], *, code: ErrorCode, detail: str, routing_key: str, failed_at: datetime
) -> dict[str, Any]:
    """The original headers plus the contract's error headers."""
    return {
        **headers,
        ERROR: code.value,
        ERROR_DETAIL: " ".join(detail.split())[:1000],  # one line, of a readable length
        ORIGINAL_ROUTING_KEY: routing_key,
        FAILED_AT: failed_at.isoformat(),
    }


def retry_headers(
    headers: dict[str, Any], *, routing_key: str, since: datetime, received_at: datetime
) -> dict[str, Any]:
    """The original headers plus what a retry needs to know when it comes back.

    `since` and `received_at` are the values the consumer worked with (read from these headers
    when they were valid): written every time, so a malformed header can't reset the window.
    """
    try:
        count = int(headers.get(RETRY_COUNT) or 0)
    except (TypeError, ValueError):
        count = 0
    return {
        **headers,
        ORIGINAL_ROUTING_KEY: routing_key,
        WAITING_SINCE: since.isoformat(),
        RECEIVED_AT: received_at.isoformat(),
        RETRY_COUNT: count + 1,
    }


def header_time(message: MessageLike, name: str) -> datetime | None:
    """A timestamp header written by this consumer; None if absent, malformed or naive."""
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Anyone can set a header: a time without an offset can't be compared, so it counts as none.
    return parsed if parsed.tzinfo is not None else None


def plan_acks(tags: Sequence[int], *, outstanding: Sequence[int]) -> tuple[int | None, list[int]]:
    """How to ack `tags`: (tag for one multiple-ack, or None; tags to ack one by one).

    One `multiple=True` ack is safe only when the tags are exactly every outstanding tag up to
    the highest: anything else in that range would be acked too, and acking it again later
    closes the channel.
    """
    if not tags:
        return None, []
    distinct = set(tags)
    highest = max(distinct)
    below = {tag for tag in outstanding if tag <= highest}
    if below == distinct:
        return highest, []
    return None, sorted(distinct)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turn client and socket errors into the project's, with no secret in the message."""
    try:
        yield
    except aiormq.exceptions.PublishError as exc:  # basic.return of a mandatory message
        raise UnroutableError(
            f"no queue is bound for routing key {exc.args[1]!r}: {redact(str(exc.args[0]))}"
        ) from exc
    except aiormq.exceptions.DeliveryError as exc:  # a nack: say, a full queue refusing
        raise BrokerError(f"the broker refused the message: {redact(str(exc))}") from exc
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:
        reply = str(exc.args[-1]).removeprefix("NOT_FOUND - ") if exc.args else str(exc)
        raise BrokerError(f"{redact(reply)}: run `task-history migrate` to declare it") from exc
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise BrokerError(
            f"the broker refused the topology (declared before with other arguments?): "
            f"{redact(str(exc))}"
        ) from exc
    except aio_pika.exceptions.ProbableAuthenticationError as exc:
        raise BrokerError(f"the broker refused the credentials: {redact(str(exc))}") from exc
    except (
        OSError,
        TimeoutError,
        aio_pika.exceptions.AMQPConnectionError,
        aio_pika.exceptions.ChannelInvalidStateError,
        aio_pika.exceptions.ChannelClosed,
    ) as exc:
        detail = redact(str(exc)) or type(exc).__name__
        raise BrokerUnavailableError(f"broker unavailable: {detail}") from exc
    except aio_pika.exceptions.AMQPError as exc:
        raise BrokerError(redact(str(exc)) or type(exc).__name__) from exc


async def close_connection(connection: aio_pika.abc.AbstractConnection, *, grace: float) -> None:
    """Close `connection`; after `grace` seconds, stop waiting for the broker's reply."""
    with contextlib.suppress(TimeoutError, *aio_pika.exceptions.CONNECTION_EXCEPTIONS):
        await asyncio.wait_for(connection.close(), grace)


MessageHandler = Callable[[Received], Awaitable[None]]


class Broker:
    """A robust connection with one confirming channel: consume, dead-letter, retry, ack."""

    def __init__(self, url: str, *, topology: Topology) -> None:
        """Prepare a broker client for `url`; `connect()` (or `async with`) connects."""
        self._url = url
        self.topology = topology
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._handler: MessageHandler | None = None
        self._dead_letters: aio_pika.abc.AbstractExchange | None = None
        # Delivery tags handed to us and not yet acked, on the channel that delivered them.
        self._outstanding: set[int] = set()
        self._delivering_channel: object = None

    async def connect(self) -> None:
        """Open the connection and a channel with publisher confirms."""
        with translated_errors():
            self._connection = await aio_pika.connect_robust(self._url)
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        # The client reconnects by itself; these say so in the log, one line each way.
        self._connection.close_callbacks.add(self._on_lost)
        self._connection.reconnect_callbacks.add(self._on_restored)

    def _on_lost(self, _connection: object, exc: BaseException | None) -> None:
        if self._connection is not None and exc is not None:  # not our own close()
            detail = redact(str(exc)) or type(exc).__name__
            log.warning("broker connection lost; reconnecting", error=detail)

    def _on_restored(self, _connection: object) -> None:
        log.info("broker connection restored")

    async def close(self, *, grace: float = 10) -> None:
        """Close the connection; after `grace` seconds, stop waiting for the broker's reply."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await close_connection(connection, grace=grace)

    async def __aenter__(self) -> Self:
        """Connect."""
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close."""
        await self.close()

    @property
    def channel(self) -> AbstractRobustChannel:
        """The open channel; using a broker before `connect()` is a bug."""
        if self._channel is None:
            raise BrokerError("the broker is not connected")
        return self._channel

    @property
    def broker_version(self) -> str:
        """The RabbitMQ version the connection reported, such as "3.10.8"."""
        if self._connection is None or self._connection.transport is None:
            raise BrokerError("the broker is not connected")
        return header_text(self._connection.transport.connection.server_properties.get("version"))

    async def declare(self) -> None:
        """Declare the exchanges and queues, idempotently; the same arguments every time."""
        t = self.topology
        with translated_errors():
            channel = self.channel
            exchange = await channel.declare_exchange(
                t.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._dead_letters = await channel.declare_exchange(
                t.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._queue = await channel.declare_queue(
                t.queue, durable=True, arguments=t.queue_arguments()
            )
            await self._queue.bind(exchange, "history.#")
            dead = await self._declare_dead_letter_queue()
            await dead.bind(self._dead_letters, "#")
            await channel.declare_queue(
                t.retry_queue, durable=True, arguments=t.retry_queue_arguments()
            )

    async def _declare_dead_letter_queue(self) -> AbstractQueue:
        """The dead-letter queue as it is, or declared anew with this broker's arguments.

        Its arguments depend on the broker's version: one declared before an upgrade from 3.x
        to 4.x has none, and declaring it again with -1 would fail. An existing queue is used
        as it is (on 4.x, give it the limit with a policy: see README's topology section).
        """
        assert self._connection is not None  # noqa: S101  # declare() runs connected
        probe = await self._connection.channel()  # a failed passive declare closes its channel
        try:
            await probe.declare_queue(self.topology.dead_letter_queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return await self.channel.declare_queue(
                self.topology.dead_letter_queue,
                durable=True,
                arguments=self.topology.dead_letter_queue_arguments(
                    broker_version=self.broker_version
                ),
            )
        await probe.close()
        return await self.channel.declare_queue(self.topology.dead_letter_queue, passive=True)

    async def delete(self) -> None:
        """Delete the exchanges and queues, messages and all (tests and teardown only)."""
        t = self.topology
        with translated_errors():
            for queue in (t.queue, t.dead_letter_queue, t.retry_queue):
                await self.channel.queue_delete(queue)
            for exchange in (t.exchange, t.dead_letter_exchange):
                await self.channel.exchange_delete(exchange)

    async def consume(self, handler: MessageHandler, *, prefetch: int) -> None:
        """Start delivering messages of the main queue to `handler`, `prefetch` unacked at most.

        The subscription is made on the client's own channel (see Received) and made again
        each time the robust channel reopens after a reconnect.
        """
        if self._queue is None:
            await self.declare()
        self._handler = handler
        with translated_errors():
            await self.channel.set_qos(prefetch_count=prefetch)  # kept, and restored, by aio-pika
            await self._subscribe(self.channel)
        self.channel.reopen_callbacks.add(self._subscribe)

    async def _subscribe(self, _channel: object) -> None:
        """Subscribe on the open channel (also the robust channel's reopen callback)."""
        if self._handler is None:  # cancelled meanwhile
            return
        underlay = await self.channel.get_underlay_channel()
        ok = await underlay.basic_consume(self.topology.queue, self._deliver, no_ack=False)
        self._consumer_tag = ok.consumer_tag

    async def _deliver(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        message = Received(delivered)
        if message.channel is not self._delivering_channel:
            # A new channel after a reconnect: tags restart, the old ones are void.
            self._delivering_channel = message.channel
            self._outstanding = set()
        if message.delivery_tag is not None:
            self._outstanding.add(message.delivery_tag)
        if self._handler is not None:
            await self._handler(message)

    @property
    def consuming(self) -> bool:
        """Whether the subscription is on and its channel open (false while reconnecting)."""
        return (
            self._consumer_tag is not None
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def cancel(self) -> None:
        """Stop deliveries; returns when the broker has confirmed that no more will come."""
        self._handler = None
        if self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            with translated_errors():
                underlay = await self.channel.get_underlay_channel()
                await underlay.basic_cancel(tag)

    async def ack(self, messages: Sequence[Received]) -> int:
        """Ack messages, in one frame where that is safe; return how many could not be acked.

        A message from a channel that has since closed can't be acked: the broker redelivers
        it, and the idempotent insert absorbs the copy.
        """
        live = self._live(messages)
        by_tag = {m.delivery_tag: m for m in live if m.delivery_tag is not None}
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
        return len(messages) - len(live)

    def holds_any(self, messages: Sequence[Received]) -> bool:
        """Whether any of `messages` can still be acked: delivered on the channel open now."""
        return bool(self._live(messages))

    def _live(self, messages: Sequence[Received]) -> list[Received]:
        return [
            message
            for message in messages
            if message.channel is self._delivering_channel
            and not message.channel.is_closed
            and message.delivery_tag is not None
        ]

    async def dead_letter(
        self, message: Received, *, code: ErrorCode, detail: str, now: datetime
    ) -> None:
        """Publish a copy to the dead-letter exchange with the error headers, confirmed."""
        if self._dead_letters is None:
            await self.declare()
        assert self._dead_letters is not None  # noqa: S101  # declare() sets it
        key = original_routing_key(message)
        headers = dead_letter_headers(
            dict(message.headers or {}), code=code, detail=detail, routing_key=key, failed_at=now
        )
        with translated_errors():
            await self._dead_letters.publish(_copy(message, headers), routing_key=key)

    async def retry_later(
        self,
        message: Received,
        *,
        delay: float,
        since: datetime,
        received_at: datetime,
    ) -> None:
        """Park a copy in the retry queue for `delay` seconds; wait for the confirm."""
        headers = retry_headers(
            dict(message.headers or {}),
            routing_key=original_routing_key(message),
            since=since,
            received_at=received_at,
        )
        copy = _copy(message, headers, expiration=delay)
        with translated_errors():
            await self.channel.default_exchange.publish(copy, routing_key=self.topology.retry_queue)


class HeldQueue:
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

    async def __aenter__(self) -> Self:
        """Connect, take the lock, and start taking the messages that are in the queue now."""
        with translated_errors():
            # A plain connection: after a reconnect, held messages would come again as new.
            self._connection = await aio_pika.connect(self._url)
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def _open(self) -> None:
        assert self._connection is not None  # noqa: S101  # set by __aenter__
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
            await close_connection(connection, grace=10)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close."""
        await self.close()

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
            await target.publish(_copy(message, headers), routing_key=routing_key, mandatory=True)
            await message.ack()

    async def _exchange(self, name: str) -> aio_pika.abc.AbstractExchange:
        assert self._channel is not None  # noqa: S101  # set while held
        if name not in self._exchanges:
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=True)
        return self._exchanges[name]


def _copy(
    message: MessageLike, headers: dict[str, Any], *, expiration: float | None = None
) -> aio_pika.Message:
    """The same body and properties, persistent, with new headers.

    user_id is left out: the broker refuses a user_id other than the publishing connection's;
    so are the broker's own headers (BROKER_HEADERS).
    """
    return aio_pika.Message(
        body=message.body,
        headers={name: value for name, value in headers.items() if name not in BROKER_HEADERS},
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=expiration,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
