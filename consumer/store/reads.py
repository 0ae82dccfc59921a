"""Reads, paged, streamed or live: oldest first, ties in arrival order, expired rows hidden."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from datetime import datetime
from uuid import UUID

import asyncpg

from consumer.entries import HistoryEntry
from consumer.errors import DatabaseUnavailableError, NotMigratedError, StoreError
from consumer.pages import Cursor, HistoryQuery, Page
from consumer.store import queries
from consumer.store.pool import StoreBase, translated
from consumer.store.queries import PAGE_EXTRA_COLUMNS, page_sql, read_arguments, read_sql


def _without(record: asyncpg.Record, columns: tuple[str, ...]) -> dict[str, object]:
    return {name: value for name, value in record.items() if name not in columns}


def _entry_and_seq(record: asyncpg.Record | dict[str, object]) -> tuple[HistoryEntry, int]:
    values = dict(record.items())
    seq = values.pop("seq")
    return HistoryEntry.model_validate(values), seq


def _entry(record: asyncpg.Record) -> HistoryEntry:
    return _entry_and_seq(record)[0]


class ReadStore(StoreBase):
    """Every read of the entries."""

    async def _read(self, query: HistoryQuery, *, limit: int | None) -> list[asyncpg.Record]:
        return await self._fetch(read_sql(query), *read_arguments(query, limit=limit))

    async def _entries(self, query: HistoryQuery) -> list[HistoryEntry]:
        return [_entry(record) for record in await self._read(query, limit=query.limit)]

    async def find_by_task(self, task_id: UUID, *, limit: int | None = None) -> list[HistoryEntry]:
        """A task's entries, oldest first."""
        return await self._entries(HistoryQuery(task_id=task_id, limit=limit))

    async def find_by_workspace(
        self, workspace_id: UUID, *, limit: int | None = None
    ) -> list[HistoryEntry]:
        """A workspace's entries across its tasks, oldest first."""
        return await self._entries(HistoryQuery(workspace_id=workspace_id, limit=limit))

    async def find_by_session(
        self, session_id: UUID, *, limit: int | None = None
    ) -> list[HistoryEntry]:
        """A session's entries, oldest first."""
        return await self._entries(HistoryQuery(session_id=session_id, limit=limit))

    async def find_page(self, query: HistoryQuery, *, max_bytes: int | None = None) -> Page:
        """One page of the entries `query` selects, and the cursor of the next, if any.

        With `max_bytes`, the page also stops, in the database, once its entries' content and
        metadata (and 300 bytes each for the rest) would pass that many bytes; it always holds
        at least one entry. Memory then follows the budget, not the count of entries.
        """
        # One row more than asked says whether another page follows.
        limit = None if query.limit is None else query.limit + 1
        arguments = read_arguments(query, limit=limit)
        if max_bytes is None:
            records = await self._fetch(read_sql(query), *arguments)
            found = len(records)
        else:
            records = await self._fetch(page_sql(query), *arguments, max_bytes)
            found = records[0]["read_rows"] if records else 0
            records = [_without(record, PAGE_EXTRA_COLUMNS) for record in records]
        rows = [_entry_and_seq(record) for record in records]
        more = len(rows) < found  # the budget stopped the page
        if query.limit is not None and len(rows) > query.limit:
            rows = rows[: query.limit]
            more = True
        following = None
        if more and rows:
            last, seq = rows[-1]
            following = Cursor(last.created_at, seq, newest_first=query.newest_first)
        return Page(entries=[entry for entry, _ in rows], next=following, cut=len(rows) < found - 1)

    async def stream(
        self, query: HistoryQuery, *, prefetch: int = 1000
    ) -> AsyncGenerator[HistoryEntry]:
        """Every entry `query` selects, fetched `prefetch` at a time through a server-side cursor.

        Memory stays bounded however many entries match; one read-only REPEATABLE READ
        transaction gives the whole stream one snapshot. Close the iterator (or read it to the
        end) to give the connection back.
        """
        async with (
            self._connection() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = connection.cursor(
                read_sql(query), *read_arguments(query, limit=query.limit), prefetch=prefetch
            )
            async for record in cursor:
                yield _entry(record)

    async def find_by_ids(self, ids: Collection[UUID]) -> list[HistoryEntry]:
        """The entries with these ids that are stored (and not expired), oldest first."""
        return [_entry(record) for record in await self._fetch(queries.FIND_BY_IDS, list(ids))]

    async def follow(
        self, task_id: UUID, *, from_start: bool = False
    ) -> AsyncGenerator[HistoryEntry]:
        """A task's entries as they are stored, without end; `from_start` yields its history first.

        Driven by LISTEN/NOTIFY (sql/0002_notify.sql), never by polling: it listens before it
        reads the current entries, so nothing committed in between is missed. On each
        notification for the task it reads the task's entries and yields the ones it has not
        seen, in arrival order. Cancel the task iterating it (or close it) to stop.
        """
        woken = asyncio.Event()
        lost = asyncio.Event()
        wanted = str(task_id)

        def on_notify(_connection: object, _pid: int, _channel: str, payload: str) -> None:
            # The payload is JSON with the task id; cheaper to look for the id than to parse.
            if wanted in payload:
                woken.set()

        def on_lost(_connection: object) -> None:
            lost.set()
            woken.set()

        history = HistoryQuery(task_id=task_id)
        async with self._connection() as connection:
            await _require_notifications(connection)
            await connection.add_listener(queries.NOTIFY_CHANNEL, on_notify)
            connection.add_termination_listener(on_lost)
            try:
                current = await connection.fetch(
                    read_sql(history), *read_arguments(history, limit=None)
                )
                seen = {record["id"] for record in current}
                if from_start:
                    for record in current:
                        yield _entry(record)
                while True:
                    await woken.wait()
                    woken.clear()
                    if lost.is_set():
                        raise DatabaseUnavailableError("database unavailable: connection lost")
                    records = await connection.fetch(queries.FOLLOW_TASK, task_id)
                    fresh = [record for record in records if record["id"] not in seen]
                    # Keep only ids still stored: a trimmed or expired id never comes back.
                    seen = {record["id"] for record in records}
                    for record in fresh:
                        yield _entry(record)
            finally:
                connection.remove_termination_listener(on_lost)
                if not connection.is_closed():
                    await connection.remove_listener(queries.NOTIFY_CHANNEL, on_notify)

    async def check_notifications(self) -> None:
        """Raise NotMigratedError unless sql/0002_notify.sql is applied (what wakes a tail)."""
        async with self._connection() as connection:
            await _require_notifications(connection)

    async def arrivals(
        self, task_id: UUID, *, after_seq: int | None = None
    ) -> list[tuple[HistoryEntry, Cursor]]:
        """A task's entries in arrival order, each with its cursor; only those after `after_seq`.

        A task holds at most the cap (100 by default), so this is one small read.
        """
        if after_seq is None:
            records = await self._fetch(queries.FOLLOW_TASK, task_id)
        else:
            records = await self._fetch(queries.ARRIVALS_OF_TASK_AFTER, task_id, after_seq)
        return [
            (entry, Cursor(entry.created_at, seq))
            for entry, seq in (_entry_and_seq(record) for record in records)
        ]

    @asynccontextmanager
    async def notifications(
        self, on_task: Callable[[UUID], None], *, on_lost: Callable[[], None]
    ) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
        """While the block runs, one connection LISTENs: `on_task(task_id)` on each notification.

        The block gets `ping(within)`: a trivial query on that connection, DatabaseUnavailableError
        (and the connection dropped) unless it answers within `within` s.

        `on_lost()` is called if that connection dies; the block should then end, and a new one
        listen again. The connection is one of the pool's, held for the whole block.
        """

        def on_notify(_connection: object, _pid: int, _channel: str, payload: str) -> None:
            try:
                task_id = UUID(json.loads(payload)["task_id"])
            except (ValueError, KeyError, TypeError):
                return  # not a notification of sql/0002_notify.sql
            on_task(task_id)

        def lost(_connection: object) -> None:
            on_lost()

        async with self._connection() as connection:

            async def ping(within: float) -> None:
                try:
                    with translated():
                        await connection.fetchval(queries.PING, timeout=within)
                except StoreError:
                    # A connection that does not answer is dropped, not waited on: releasing
                    # it to the pool would wait on it too.
                    connection.terminate()
                    raise

            await _require_notifications(connection)
            with translated():
                await connection.add_listener(queries.NOTIFY_CHANNEL, on_notify)
            connection.add_termination_listener(lost)
            try:
                yield ping
            finally:
                connection.remove_termination_listener(lost)
                if not connection.is_closed():
                    with contextlib.suppress(Exception):  # the block's own error goes first
                        await connection.remove_listener(queries.NOTIFY_CHANNEL, on_notify)

    async def received_by_tasks(self, task_ids: Collection[UUID]) -> dict[UUID, int]:
        """How many entries each task has been given, those the cap removed included."""
        records = await self._fetch(queries.RECEIVED_BY_TASKS, list(task_ids))
        return {record["task_id"]: record["received"] for record in records}

    async def count_by_task(self, task_id: UUID) -> int:
        """How many entries a task has."""
        return int(await self._fetchval(queries.COUNT_BY_TASK, task_id))

    async def oldest_entry_date(self, task_id: UUID | None = None) -> datetime | None:
        """When the oldest entry (of one task, or of all) was created; None when there is none."""
        if task_id is None:
            oldest: datetime | None = await self._fetchval(queries.OLDEST)
        else:
            oldest = await self._fetchval(queries.OLDEST_OF_TASK, task_id)
        return oldest


async def _require_notifications(connection: asyncpg.Connection) -> None:
    """Raise NotMigratedError unless sql/0002_notify.sql is applied: nothing else wakes a tail."""
    if not await connection.fetchval(queries.HAS_NOTIFY):
        raise NotMigratedError("the database lacks sql/0002_notify.sql: run `task-history migrate`")
