"""Publishing events as contract §2 asks: validated first, persistent, confirmed, never dropped."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

from consumer import tracing
from consumer.broker.amqp import (
    CLOSE_GRACE,
    check_exchange,
    close_connection,
    connect_confirming,
    translated_errors,
)
from consumer.broker.headers import routing_key
from consumer.errors import (
    BrokerUnavailableError,
    ErrorCode,
    InvalidEventError,
    NotConnectedError,
    TaskHistoryError,
)
from consumer.events import Event, new_event_id, parse_event
from consumer.lifecycle import AsyncResource

DEFAULT_EXCHANGE = "task_build_history"
DEFAULT_WINDOW = 256

EventLike = Mapping[str, Any] | Event


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """An event validated and ready to go: its id (also the message_id), routing key and body."""

    id: uuid.UUID
    routing_key: str
    body: bytes


def _json_value(value: object) -> object:
    """What json.dumps can't write by itself: UUIDs, enums and datetimes, as their text."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()  # a naive one has no offset, and the model refuses it
    raise TypeError(f"{type(value).__name__} is not JSON")


def _dumps(data: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(data, default=_json_value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidEventError(
            ErrorCode.INVALID_EVENT, "NaN and Infinity are not JSON numbers"
        ) from None
    except TypeError as exc:
        raise InvalidEventError(ErrorCode.INVALID_EVENT, str(exc)) from None
    return text.encode("utf-8", "surrogatepass")


def prepare_event(event: EventLike, *, now: datetime) -> OutgoingEvent:
    """Validate an event exactly as the consumer will, and encode it; raise InvalidEventError.

    An event without `id` gets a new UUID, written into the body as well, so the body and the
    message_id agree and a re-publish of the same body is stored once. An event without
    `created_at` gets `now`: the publisher's clock is closer to when it happened than the
    consumer's, which may read it from a backlog later. Fields the model does not know are
    sent as they are (a consumer ignores them).
    """
    if isinstance(event, Event):
        data = event.model_dump(mode="json", exclude_none=True)
    elif isinstance(event, Mapping):
        data = dict(event)
    else:
        raise InvalidEventError(ErrorCode.INVALID_EVENT, "body must be a JSON object")
    if data.get("id") is None:
        data["id"] = str(new_event_id())
    if data.get("created_at") is None:
        data["created_at"] = now
    body = _dumps(data)
    entry = parse_event(body, message_id=None, received_at=now)
    if data["id"] != str(entry.id):  # a UUID object, or text in another spelling
        data["id"] = str(entry.id)
        body = _dumps(data)
    return OutgoingEvent(id=entry.id, routing_key=routing_key(entry.context_type), body=body)


def prepare_events(
    events: Iterable[EventLike | OutgoingEvent], *, now: datetime
) -> list[OutgoingEvent]:
    """`prepare_event` for each event not prepared yet; InvalidEventError names the position."""
    prepared: list[OutgoingEvent] = []
    for index, event in enumerate(events):
        try:
            prepared.append(
                event if isinstance(event, OutgoingEvent) else prepare_event(event, now=now)
            )
        except InvalidEventError as exc:
            raise InvalidEventError(exc.code, f"event {index}: {exc.detail}") from None
    return prepared


def read_event_lines(
    lines: Iterable[str | bytes], *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Iterator[tuple[int, OutgoingEvent | InvalidEventError]]:
    """Each non-blank line of a JSON Lines text, by number from 1: an event, or why not.

    A line without `created_at` gets `clock()` as it is read: a stream from stdin may run for
    days, and each event happened when its line came.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to read
            yield number, InvalidEventError(ErrorCode.INVALID_JSON, f"not valid JSON: {exc}")
            continue
        if not isinstance(data, dict):
            yield number, InvalidEventError(ErrorCode.INVALID_EVENT, "body must be a JSON object")
            continue
        try:
            yield number, prepare_event(data, now=clock())
        except InvalidEventError as exc:
            yield number, exc


class HistoryPublisher(AsyncResource):
    """Publishes events to the history exchange: validated, persistent, mandatory, confirmed.

    `publish` returns once the broker has confirmed the message, so it is safe in a queue;
    a message no queue is bound for raises UnroutableError instead of vanishing, and a
    missing exchange BrokerError, naming it and the fix.

        async with HistoryPublisher("amqp://guest:guest@localhost/") as publisher:
            event_id = await publisher.publish({"task_id": ..., "context_type": ..., ...})
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        window: int = DEFAULT_WINDOW,
        confirm_timeout: float = 30,
    ) -> None:
        """Prepare a publisher for the broker at `url`; `connect()` (or `async with`) connects.

        `window` is how many unconfirmed messages `publish_many` keeps in flight;
        `confirm_timeout` how long a publish waits for the broker's confirm.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        self._url = url
        self.exchange_name = exchange
        self.window = window
        self._confirm_timeout = confirm_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def connect(self) -> None:
        """Connect, open a confirming channel, and check that the exchange exists.

        A missing exchange raises BrokerError at once: `task-history migrate` has not run on
        that broker (or vhost), or the name is wrong.
        """
        self._connection, self._channel = await connect_confirming(self._url)
        try:
            await check_exchange(self._connection, self.exchange_name)
        except BaseException:
            await self.close()
            raise
        # Not declared on the publishing channel: a robust channel declares its exchanges
        # again each time it reopens, and one deleted meanwhile would keep it closed for good.
        self._exchange = await self._channel.get_exchange(self.exchange_name, ensure=False)

    async def _begin(self) -> None:
        await self.connect()

    async def close(self) -> None:
        """Close the connection."""
        self._exchange = self._channel = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await close_connection(connection, grace=CLOSE_GRACE)

    async def publish(self, event: EventLike | OutgoingEvent) -> uuid.UUID:
        """Validate and publish one event; return its id once the broker has confirmed it.

        Raises InvalidEventError before anything is sent, UnroutableError when no queue is
        bound for its routing key, BrokerError when the broker refuses it (the exchange was
        deleted, say: the broker closes the channel, which reopens by itself for the next
        publish), BrokerUnavailableError when the connection is lost.
        """
        outgoing = (
            event
            if isinstance(event, OutgoingEvent)
            else prepare_event(event, now=datetime.now(UTC))
        )
        if self._exchange is None or self._channel is None:
            raise NotConnectedError("the publisher is not connected")
        await self._reopened(self._channel)
        headers: dict[str, Any] = {}
        tracing.inject(headers)  # the trace this publish is part of, for the consumer
        message = aio_pika.Message(
            outgoing.body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(outgoing.id),
            headers=headers or None,
        )
        with translated_errors():
            await self._exchange.publish(
                message,
                routing_key=outgoing.routing_key,
                mandatory=True,
                timeout=self._confirm_timeout,
            )
        return outgoing.id

    async def _reopened(self, channel: AbstractRobustChannel) -> None:
        """Wait, at most `confirm_timeout`, for a channel the broker closed to reopen."""
        if not channel.is_closed:
            return
        try:
            async with asyncio.timeout(self._confirm_timeout):
                while channel.is_closed:
                    await channel.ready()
                    if channel.is_closed:  # its close is still being handled
                        await asyncio.sleep(0.01)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"broker unavailable: the channel did not reopen within {self._confirm_timeout} s"
            ) from None

    async def publish_many(
        self, events: Iterable[EventLike | OutgoingEvent], *, window: int | None = None
    ) -> list[uuid.UUID]:
        """Validate every event, then publish them with up to `window` awaiting confirms.

        Nothing is sent if any event is invalid (InvalidEventError names its position). If the
        broker refuses some, the rest are still sent, and the first refusal is raised at the
        end. Publishing the same events again is safe for those that carry an `id`: an event
        without one gets a new id each time, and would be stored twice.
        """
        prepared = prepare_events(events, now=datetime.now(UTC))
        failed: list[TaskHistoryError] = []
        async for _, error in self.publish_each(prepared, window=window):
            if error is not None:
                failed.append(error)
        if failed:
            first = failed[0]
            first.add_note(f"{len(failed)} of {len(prepared)} events not published")
            raise first
        return [outgoing.id for outgoing in prepared]

    async def publish_each(
        self, events: Iterable[OutgoingEvent], *, window: int | None = None
    ) -> AsyncIterator[tuple[int, TaskHistoryError | None]]:
        """Publish prepared events, `window` in flight; yield (position, None or the error).

        Results come as confirms arrive, not in order. `events` is read lazily, so a long
        stream (a file, stdin) never sits in memory.
        """
        limit = window or self.window
        in_flight: dict[asyncio.Task[uuid.UUID], int] = {}
        try:
            for index, outgoing in enumerate(events):
                while len(in_flight) >= limit:
                    for result in await self._settle(in_flight):
                        yield result
                in_flight[asyncio.create_task(self.publish(outgoing))] = index
            while in_flight:
                for result in await self._settle(in_flight):
                    yield result
        finally:
            for task in in_flight:
                task.cancel()

    @staticmethod
    async def _settle(
        in_flight: dict[asyncio.Task[uuid.UUID], int],
    ) -> list[tuple[int, TaskHistoryError | None]]:
        """Wait for at least one publish to finish; its position and error, if any."""
        done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        settled: list[tuple[int, TaskHistoryError | None]] = []
        for task in done:
            index = in_flight.pop(task)
            error = task.exception()
            if error is not None and not isinstance(error, TaskHistoryError):
                raise error
            settled.append((index, error))
        return settled
