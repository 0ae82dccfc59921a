"""What the routes share while the server runs: the settings, the stores, the feeds."""

from __future__ import annotations

import asyncio

import structlog
from fastapi import Request

from consumer.api.feeds import Feeds
from consumer.api.requests import ApiMetrics
from consumer.errors import DatabaseUnavailableError, StoreError, TaskHistoryError
from consumer.settings import Settings
from consumer.store import Store

log = structlog.get_logger()
# Connections of the operator routes: a replay holds two (a batch sent, the next claimed).
OPERATOR_CONNECTIONS = 4


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
        # The operator routes' own connections, only with an operator token: never read-only,
        # as the login TASK_HISTORY_API_OPERATOR_DATABASE_URL names (a member of
        # task_history_operator). The read routes never use them.
        self.operator_store: Store | None = None
        if settings.api_operator_token is not None:
            self.operator_store = Store(
                settings.operator_database_url,
                max_connections=OPERATOR_CONNECTIONS,
                command_timeout=settings.database_timeout_seconds,
            )
        self.operator_problem: str | None = "not connected to the database yet"
        self._readers_open = False
        self._operators_open = False

    async def open_first(self, *, within: float) -> None:
        """Try to open the store once: an outage is left to `connect()`; any other error raises.

        A database that does not exist or a role it refuses will not pass by waiting: the
        server stops at once with that error instead of retrying for ever. So does an
        operator login that may not replay and purge.
        """
        try:
            await asyncio.wait_for(self._open_readers(), within)
            await asyncio.wait_for(self._open_operators(), within)
        except (DatabaseUnavailableError, TimeoutError) as exc:
            log.warning("database unavailable, retrying", error=str(exc) or "no answer")
            return
        if self.operator_problem is not None and self.operator_store is not None:
            raise StoreError(self.operator_problem)
        self.connected.set()

    async def _open_readers(self) -> None:
        """Open the read routes' store, unless it is open."""
        if not self._readers_open:
            await self.store.open()
            self._readers_open = True

    async def _open_operators(self) -> None:
        """Open the operator routes' store (unless open) and check its role may do their work."""
        if self.operator_store is None:
            return
        if not self._operators_open:
            await self.operator_store.open()
            self._operators_open = True
        if await self.operator_store.may_operate():
            self.operator_problem = None
        else:
            self.operator_problem = (
                "TASK_HISTORY_API_OPERATOR_TOKEN is set, but the database login of"
                " TASK_HISTORY_API_OPERATOR_DATABASE_URL (or TASK_HISTORY_DATABASE_URL) may"
                " not delete dead letters and record it: use a login that is a member of"
                " task_history_operator"
            )

    async def connect(self) -> None:
        """Open the store (unless open), retrying with backoff while it is away; then listen."""
        delay = 0.2
        while not self.connected.is_set():
            try:
                await self._open_readers()
                await self._open_operators()
                if self.operator_problem is not None and self.operator_store is not None:
                    log.error("the operator routes can't work", problem=self.operator_problem)
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

    async def count_dead_letters(self) -> None:
        """Bring the metrics' dead-letter census up to date; on a failure, keep the last one."""
        try:
            async with asyncio.timeout(2):
                counts, replayed, purged = await self.connected_store().dead_letter_totals()
        except (TaskHistoryError, TimeoutError) as exc:
            log.debug("dead-letter metrics not refreshed", error=str(exc) or type(exc).__name__)
            return
        self.metrics.dead_letters.show(counts, replayed=replayed, purged=purged)

    def connected_store(self) -> Store:
        """The store, once connected; DatabaseUnavailableError before."""
        if not self.connected.is_set():
            raise DatabaseUnavailableError("database unavailable: not connected yet")
        return self.store

    def operators_store(self) -> Store:
        """The operator routes' store, once connected and allowed; DatabaseUnavailableError else."""
        if self.operator_store is None or not self.connected.is_set():
            raise DatabaseUnavailableError("database unavailable: not connected yet")
        if self.operator_problem is not None:
            raise DatabaseUnavailableError(self.operator_problem)
        return self.operator_store

    async def close(self) -> None:
        """Close both stores."""
        await self.store.close(grace=2)
        if self.operator_store is not None:
            await self.operator_store.close(grace=2)


def state_of(request: Request) -> ApiState:
    """The application's state, as the routes see it."""
    state: ApiState = request.app.state.api
    return state
