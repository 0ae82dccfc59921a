"""What the routes share while the server runs: the settings, a read-only store, the feeds."""

from __future__ import annotations

import asyncio

import structlog
from fastapi import Request

from consumer.api.feeds import Feeds
from consumer.api.requests import ApiMetrics
from consumer.errors import DatabaseUnavailableError, StoreError
from consumer.settings import Settings
from consumer.store import Store

log = structlog.get_logger()


class ApiState:
    """What the routes share: the settings, a read-only store, the live feeds, the metrics."""

    def __init__(self, settings: Settings) -> None:
        """State for `settings`; `connect()` opens the store and starts listening."""
        self.settings = settings
        # Read-only whatever the role may do: the server refuses every write of these
        # connections. One connection is held by the feeds' LISTEN; the rest serve reads.
        self.store = Store(
            settings.database_url,
            max_connections=settings.api_max_connections,
            command_timeout=settings.database_timeout_seconds,
            read_only=True,
        )
        self.metrics = ApiMetrics()
        self.feeds = Feeds(
            self.store,
            retry_max_seconds=settings.retry_backoff_max_seconds,
            ping_every=settings.api_keepalive_seconds,
            backlog_bytes=settings.api_stream_queue_bytes,
            on_dropped=self.metrics.streams_dropped.inc,
        )
        self.connected = asyncio.Event()

    async def open_first(self, *, within: float) -> None:
        """Try to open the store once: an outage is left to `connect()`; any other error raises.

        A database that does not exist or a role it refuses will not pass by waiting: the
        server stops at once with that error instead of retrying for ever.
        """
        try:
            await asyncio.wait_for(self.store.open(), within)
        except (DatabaseUnavailableError, TimeoutError) as exc:
            log.warning("database unavailable, retrying", error=str(exc) or "no answer")
            return
        self.connected.set()

    async def connect(self) -> None:
        """Open the store (unless open), retrying with backoff while it is away; then listen."""
        delay = 0.2
        while not self.connected.is_set():
            try:
                await self.store.open()
                break
            except DatabaseUnavailableError as exc:
                log.warning("database unavailable, retrying", error=str(exc), retry_in=delay)
            except StoreError as exc:
                # Only the first attempt stops the server (open_first): by now this may be a
                # database being restored or a grant given back, so it is waited out too.
                log.warning("database refused the connection, retrying", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.retry_backoff_max_seconds)
        self.connected.set()
        log.info("connected to the database")
        await self.feeds.run()

    def connected_store(self) -> Store:
        """The store, once connected; DatabaseUnavailableError before."""
        if not self.connected.is_set():
            raise DatabaseUnavailableError("database unavailable: not connected yet")
        return self.store


def state_of(request: Request) -> ApiState:
    """The application's state, as the routes see it."""
    state: ApiState = request.app.state.api
    return state
