"""What every AMQP client here shares: error translation, connecting, closing, copying."""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.exceptions
import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from yarl import URL

from consumer.broker.failover import (
    CONNECT_TIMEOUT,
    amqp_urls,
    failover_connection_class,
    with_heartbeat,
)
from consumer.broker.frames import install as read_frames_leniently
from consumer.broker.headers import BROKER_HEADERS
from consumer.errors import BrokerError, BrokerUnavailableError, UnroutableError
from consumer.incoming import Incoming
from consumer.redaction import redact

# Seconds a close waits for the broker's reply before it stops waiting.
CLOSE_GRACE = 10


@dataclass(frozen=True, slots=True)
class _Address:
    """What an error message may name of the URL being connected to: never the password."""

    host: str
    port: int
    vhost: str
    user: str | None


def _address_of(url: str) -> _Address:
    """The host, port, vhost and user of an AMQP URL, defaulted as the client defaults them."""
    parsed = URL(url)
    port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
    # As the client reads it: yarl leaves an encoded slash in a path encoded.
    vhost = parsed.path[1:].replace("%2F", "/") if parsed.path not in ("", "/") else "/"
    return _Address(host=parsed.host or "", port=port, vhost=vhost, user=parsed.user or None)


@contextmanager
def translated_errors(*, url: str | None = None) -> Iterator[None]:
    """Turn client and socket errors into the project's, with no secret in the message.

    `url`: the one broker address being connected to, if any; a failure to connect or log in
    names its host, port, vhost or user.
    """
    address = _address_of(url) if url is not None else None
    try:
        with _calls_failed_by_a_close():
            yield
    except aiormq.exceptions.PublishError as exc:  # basic.return of a mandatory message
        raise UnroutableError(unroutable_message(exc)) from exc
    except aiormq.exceptions.DeliveryError as exc:  # a nack: say, a full queue refusing
        raise BrokerError(f"the broker refused the message: {redact(str(exc))}") from exc
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:
        raise BrokerError(
            f"{redact(_reply(exc, 'NOT_FOUND'))}: run `task-history migrate` on this broker"
            " to declare it, or check the name"
        ) from exc
    except aiormq.exceptions.ChannelAccessRefused as exc:  # 403: not an outage, a mistake
        reply = redact(str(exc.args[-1]) if exc.args else str(exc))  # keeps "ACCESS_REFUSED - "
        if "internal exchange" in reply:
            reply += (
                ": it takes only the broker's own dead letters; publish events to the history"
                " exchange (task_build_history unless configured otherwise)"
            )
        raise BrokerError(f"the broker refused access: {reply}") from exc
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise BrokerError(
            f"the broker refused the topology (declared before with other arguments?): "
            f"{redact(str(exc))}"
        ) from exc
    except aio_pika.exceptions.ProbableAuthenticationError as exc:
        raise BrokerError(_refused_credentials(exc, address)) from exc
    except (
        OSError,
        TimeoutError,
        aio_pika.exceptions.AMQPConnectionError,
        aio_pika.exceptions.ChannelInvalidStateError,
        aio_pika.exceptions.ChannelClosed,
    ) as exc:
        detail = redact(str(exc)) or type(exc).__name__
        raise BrokerUnavailableError(
            f"broker unavailable: {_unreachable(exc, address) or detail}"
        ) from exc
    except aio_pika.exceptions.AMQPError as exc:
        raise BrokerError(
            _refused_vhost(exc, address) or redact(str(exc)) or type(exc).__name__
        ) from exc


@contextmanager
def _calls_failed_by_a_close() -> Iterator[None]:
    """The errors the client fails waiting calls with when it closes their channel: outages."""
    try:
        yield
    except asyncio.CancelledError as exc:
        # A connection it gave up (no frames for three heartbeats): the CancelledError of its
        # reader task. Unless this task itself is being cancelled (a stop, a timeout): that must
        # go on as a cancellation.
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise BrokerUnavailableError(
            "broker unavailable: the connection was closed while a call waited on it"
        ) from exc
    except Exception as exc:
        if type(exc) is not Exception:
            raise
        # A channel it closed with no reason given: a bare Exception (aiormq's FutureStore).
        raise BrokerUnavailableError(
            "broker unavailable: the channel was closed while a call waited on it"
        ) from exc


def _refused_credentials(exc: BaseException, address: _Address | None) -> str:
    """One line for a login the broker refused: whose, and where to look."""
    who = f" of user {address.user!r}" if address is not None and address.user else ""
    return (
        f"the broker refused the credentials{who}: check the user name and password in the"
        f" AMQP URL ({redact(str(exc))})"
    )


def _refused_vhost(exc: BaseException, address: _Address | None) -> str | None:
    """One line for a vhost the broker would not open; None for any other failure."""
    if not isinstance(exc, aiormq.exceptions.InvalidFrameError) or "Connection.OpenOk" not in str(
        exc
    ):
        return None
    # The broker answered "open this vhost" by closing the connection. The client drops the
    # reason it gave, which is one of these two.
    vhost = f"vhost {address.vhost!r}" if address is not None else "the vhost"
    user = f" {address.user!r}" if address is not None and address.user else ""
    return (
        f"the broker refused to open {vhost} named in the AMQP URL: it doesn't exist, or the"
        f" user{user} may not use it (rabbitmqctl list_vhosts, rabbitmqctl list_permissions"
        " -p VHOST)"
    )


def _unreachable(exc: BaseException, address: _Address | None) -> str | None:
    """What to check when no broker answered at the URL's address; None for other failures."""
    if address is None:
        return None
    where = f"{address.host}:{address.port}"
    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if (errno is not None and errno < 0) or isinstance(exc, socket.gaierror):  # a resolver's
        return (
            f"no host {address.host!r} is known (name resolution failed):"
            " check the host in the AMQP URL"
        )
    if errno == errno_codes.ECONNREFUSED or isinstance(exc, ConnectionRefusedError):
        return (
            f"nothing accepts connections at {where}: check the host and port in the AMQP URL,"
            " and that RabbitMQ runs there"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer from {where} in time: check the host and port in the AMQP URL"
    return None


def _reply(exc: BaseException, code: str) -> str:
    """The broker's reply text of a channel error, without its "CODE - " prefix."""
    reply = str(exc.args[-1]) if exc.args else str(exc)
    return reply.removeprefix(f"{code} - ")


def unroutable_message(exc: aiormq.exceptions.PublishError) -> str:
    """One line for a returned message: its key and exchange, and what usually fixes it."""
    delivery = exc.message.delivery if exc.message is not None else None
    key = str(getattr(delivery, "routing_key", None) or exc.args[1])
    exchange = str(getattr(delivery, "exchange", None) or "")
    reply = redact(str(exc.args[0]))
    return (
        f"no queue is bound for routing key {key!r} on exchange {exchange!r} ({reply}): the"
        " broker returned the message; check the exchange name and that the key is"
        " history.<context_type> (`task-history migrate` declares the queue and binds it)"
    )


@contextlib.asynccontextmanager
async def probe_channel(
    connection: aio_pika.abc.AbstractConnection,
) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A throwaway channel for a declare that may fail: a failure closes it, and only it.

    A plain channel of the client underneath, not a robust one: a robust channel closed by
    the broker reopens itself and replays what was declared on it, the failed check included.
    """
    with translated_errors():
        transport = connection.transport
        if transport is None:
            raise aio_pika.exceptions.ChannelInvalidStateError("the connection is not open")
        channel = await transport.connection.channel(publisher_confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception), translated_errors():
                await channel.close()


async def check_exchange(connection: aio_pika.abc.AbstractConnection, name: str) -> None:
    """Raise BrokerError, naming it and the fix, if the exchange `name` does not exist.

    A passive declare on a throwaway channel: the channel the caller publishes on stays open.
    """
    async with probe_channel(connection) as probe:
        with translated_errors():
            await probe.exchange_declare(name, passive=True)


async def close_connection(connection: aio_pika.abc.AbstractConnection, *, grace: float) -> None:
    """Close `connection`; after `grace` seconds, stop waiting for the broker's reply."""
    with contextlib.suppress(TimeoutError, *aio_pika.exceptions.CONNECTION_EXCEPTIONS):
        await asyncio.wait_for(connection.close(), grace)


class _RaisedInstead(logging.Filter):
    """Drops aiormq's own line for a connect that failed: the caller raises it, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but that one."""
        return not str(record.msg).startswith("error when creating transport")


_RAISED_INSTEAD = _RaisedInstead()
_quieting = 0  # connects under way that raise their failures themselves


@contextmanager
def connect_failures_raised() -> Iterator[None]:
    """While inside, aiormq does not log the connect failures it raises to the caller.

    Without it a program that prints our error gets a second line from aiormq's logger (on
    stderr through logging's last-resort handler, when the program configured no logging).
    Only a first connect is quieted: the failures of a robust connection's own reconnects,
    which nobody raises, stay in the log.
    """
    global _quieting  # noqa: PLW0603  # a count of the connects in this process
    logger = logging.getLogger("aiormq.connection")
    _quieting += 1
    if _quieting == 1:
        logger.addFilter(_RAISED_INSTEAD)
    try:
        yield
    finally:
        _quieting -= 1
        if _quieting == 0:
            logger.removeFilter(_RAISED_INSTEAD)


async def connect_confirming(
    url: str, *, heartbeat: int | None = None
) -> tuple[AbstractRobustConnection, AbstractRobustChannel]:
    """A robust connection and a channel with publisher confirms, returns raised as errors.

    `url` may list several brokers, separated by commas: they are tried in order, and after a
    lost connection each reconnect attempt tries the next one (consumer.broker.failover).
    `heartbeat` sets the heartbeat of the URLs that don't set their own. If
    the channel can't be opened the connection is closed before the error is raised: a robust
    connection left open keeps reconnecting on its own, for as long as the process runs.
    """
    read_frames_leniently()  # a message no client can read must not drop the connection
    urls = [with_heartbeat(address, heartbeat) for address in amqp_urls(url)]
    unavailable: list[BrokerUnavailableError] = []
    for at, candidate in enumerate(urls):
        try:
            with translated_errors(url=candidate), connect_failures_raised():
                connection = await aio_pika.connect_robust(
                    candidate,
                    timeout=CONNECT_TIMEOUT,
                    connection_class=failover_connection_class(),
                    failover_urls=urls,
                    failover_at=at,
                )
        except BrokerUnavailableError as exc:
            unavailable.append(exc)
            continue
        try:
            with translated_errors(url=candidate):
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await close_connection(connection, grace=CLOSE_GRACE)
            raise
        return connection, channel
    if len(unavailable) == 1:
        raise unavailable[0]
    raise BrokerUnavailableError(
        f"none of the {len(urls)} brokers answered: "
        + "; ".join(str(exc).removeprefix("broker unavailable: ") for exc in unavailable)
    ) from unavailable[-1]


def copy_of(
    message: Incoming, headers: dict[str, Any], *, expiration: float | None = None
) -> aio_pika.Message:
    """The same body and properties, persistent, with new headers.

    user_id is left out: the broker refuses a user_id other than the publishing connection's;
    so are the broker's own headers (BROKER_HEADERS). Only a whole body can be copied.
    """
    if not message.body.whole:
        raise ValueError("only the prefix of this body was kept: it can't be copied")
    properties = message.properties
    return aio_pika.Message(
        body=message.body.data,
        headers={name: value for name, value in headers.items() if name not in BROKER_HEADERS},
        content_type=properties.get("content_type"),
        content_encoding=properties.get("content_encoding"),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=properties.get("priority"),
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to"),
        expiration=expiration,
        message_id=message.message_id,
        timestamp=properties.get("timestamp"),
        type=properties.get("type"),
        app_id=properties.get("app_id"),
    )
