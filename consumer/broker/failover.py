"""Several broker addresses: each connect, and each reconnect after a loss, tries them in turn.

aio-pika's robust connection reconnects by itself, but always to the address it started with:
a consumer whose node died would wait for that node while the others serve the queue. Here the
first connect tries the addresses in order until one answers, and once a connection is lost,
the address it will try next moves on down the list at every reconnect attempt, until one
answers again (as the Java client's address list does on recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from yarl import URL

if TYPE_CHECKING:  # the settings read amqp_urls without loading the client
    from aio_pika.abc import AbstractRobustConnection

# Seconds a connect attempt may take before the next address is tried.
CONNECT_TIMEOUT = 10


def amqp_urls(value: str) -> list[str]:
    """The addresses in a TASK_HISTORY_AMQP_URL: one URL, or several separated by commas."""
    return [part.strip() for part in value.split(",") if part.strip()]


class Failover:
    """Moves a robust connection to the next address while it is down.

    aio-pika reads the connection's `url` at every reconnect attempt and waits its
    `reconnect_interval` between attempts; while the connection is down, this moves `url` to
    the next address once per interval, so each attempt tries the next one.
    """

    def __init__(
        self, connection: AbstractRobustConnection, urls: Sequence[str], *, at: int
    ) -> None:
        """Watch `connection`, connected to `urls[at]`."""
        self._connection = connection
        self._urls = [URL(url) for url in urls]
        self._at = at
        self._moving: asyncio.Task[None] | None = None
        connection.close_callbacks.add(self._on_lost)

    def _on_lost(self, _connection: object, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, asyncio.CancelledError):  # closed on purpose
            return
        # Before aio-pika's first attempt, which this callback runs ahead of.
        self._advance()
        if self._moving is None:
            self._moving = asyncio.get_running_loop().create_task(self._move_until_connected())

    def _advance(self) -> None:
        self._at = (self._at + 1) % len(self._urls)
        # aio-pika's own attribute, read by each reconnect attempt.
        self._connection.url = self._urls[self._at]  # type: ignore[attr-defined]

    async def _move_until_connected(self) -> None:
        connection = self._connection
        interval = float(getattr(connection, "reconnect_interval", 5))
        connected: asyncio.Event = connection.connected
        try:
            while not connection.is_closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await connected.wait()
                        return
                self._advance()
        finally:
            self._moving = None

    def close(self) -> None:
        """Stop moving (the connection is being closed)."""
        if self._moving is not None:
            self._moving.cancel()
