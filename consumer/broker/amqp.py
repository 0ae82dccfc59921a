"""What every AMQP client here shares: error translation, connecting, closing, copying."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from consumer.broker.headers import BROKER_HEADERS, MessageLike
from consumer.errors import BrokerError, BrokerUnavailableError, UnroutableError
from consumer.redaction import redact

# Seconds a close waits for the broker's reply before it stops waiting.
CLOSE_GRACE = 10


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


async def connect_confirming(
    url: str,
) -> tuple[AbstractRobustConnection, AbstractRobustChannel]:
    """A robust connection and a channel with publisher confirms, returns raised as errors.

    If the channel can't be opened the connection is closed before the error is raised: a
    robust connection left open keeps reconnecting on its own, for as long as the process runs.
    """
    with translated_errors():
        connection = await aio_pika.connect_robust(url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await close_connection(connection, grace=CLOSE_GRACE)
            raise
    return connection, channel


def copy_message(
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
