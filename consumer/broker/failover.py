"""Several broker addresses: each connect, and each reconnect attempt after a loss, tries the next.

aio-pika's robust connection reconnects by itself, but always to the address it started with:
a consumer whose node died would wait for that node while the others serve the queue. Here the
first connect tries the addresses in order until one answers (`connect_confirming`), and once
a connection is lost, every reconnect attempt takes the next address in the list, round and
round, until one answers (as the Java client's address list does on recovery).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from yarl import URL

if TYPE_CHECKING:  # the settings read amqp_urls without loading the client
    from aio_pika.abc import UnderlayConnection

# Seconds a connect attempt may take before the next address is tried.
CONNECT_TIMEOUT = 10


def amqp_urls(value: str) -> list[str]:
    """The addresses in a TASK_HISTORY_AMQP_URL: one URL, or several separated by commas."""
    return [part.strip() for part in value.split(",") if part.strip()]


def with_heartbeat(url: str, seconds: int | None) -> str:
    """`url` asking for a heartbeat every `seconds` s, unless it asks for one already.

    A dead connection is noticed when nothing came for about three heartbeats: aiormq's
    default of 60 s takes three minutes, during which a frozen connection looks alive.
    """
    parsed = URL(url)
    if seconds is None or "heartbeat" in parsed.query:
        return url
    return str(parsed.update_query(heartbeat=seconds))


def failover_connection_class() -> type[Any]:
    """The robust connection class that moves to the next address at each reconnect attempt.

    Made on first use, so that reading the settings (amqp_urls) loads no AMQP client.
    """
    from aio_pika import RobustConnection  # noqa: PLC0415  # see above

    class FailoverConnection(RobustConnection):
        """A robust connection over several addresses, given as `failover_urls` and `failover_at`.

        aio-pika clears `transport` as each reconnect attempt starts, then reads `url` for
        that attempt. A clearing that replaces a lost connection, or nothing (an attempt that
        failed), starts an attempt after a failure: the next address goes into `url` for it,
        so the address that just failed is not tried again first. The first connect is left
        alone (connect_confirming orders it), and so is a close of a live connection.
        """

        def __init__(
            self,
            url: URL,
            loop: asyncio.AbstractEventLoop | None = None,
            *,
            failover_urls: Sequence[str] = (),
            failover_at: int = 0,
            **kwargs: Any,  # noqa: ANN401  # aio-pika's connection options, passed on
        ) -> None:
            self._failover_urls = [URL(address) for address in failover_urls] or [url]
            self._failover_at = failover_at
            self._ever_connected = False
            super().__init__(url, loop=loop, **kwargs)

        @property  # aio-pika's plain attribute, watched here
        def transport(self) -> UnderlayConnection | None:
            return self.__dict__.get("_failover_transport")

        @transport.setter
        def transport(self, value: UnderlayConnection | None) -> None:
            previous = self.__dict__.get("_failover_transport")
            if value is not None:
                self._ever_connected = True
            elif self.__dict__.get("_ever_connected") and (
                previous is None or previous.connection.is_closed
            ):
                self._failover_at = (self._failover_at + 1) % len(self._failover_urls)
                self.url = self._failover_urls[self._failover_at]
            self.__dict__["_failover_transport"] = value

    return FailoverConnection
