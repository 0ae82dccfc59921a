"""Dead letters as rows: counted, found, claimed for replay, purged and streamed, at any number.

Every query filters in SQL (consumer.store.queries.dead_letter_sql) and reads a bounded number
of rows at a time: nothing here loads the whole table.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

import asyncpg

from consumer.console import TOP_KEYS, ListedLetter, Timeline, TimelineKey, timeline_of
from consumer.deadletters import Census, DeadLetter, ErrorGroup, Selection
from consumer.errors import NotConnectedError
from consumer.store import queries
from consumer.store.pool import StoreBase, translated
from consumer.store.queries import FilteredQuery, dead_letter_arguments, dead_letter_sql

# The largest id a row can have: "no upper bound" for the batch queries.
LAST_ID = 2**63 - 1
# An AMQP message id is a short string: at most 255 bytes.
MESSAGE_ID_BYTES = 255
EVERY_LETTER = Selection()


def letter_of(record: asyncpg.Record) -> DeadLetter:
    """The dead letter a row of task_build_history_dead_letters holds."""
    task_id = record["task_id"]
    return DeadLetter(
        id=record["id"],
        message_id=record["message_id"],
        task_id=None if task_id is None else str(task_id),
        routing_key=record["routing_key"],
        code=record["error"],
        detail=record["detail"],
        failed_at=record["failed_at"],
        replay_count=record["replay_count"],
        headers=record["headers"],
        properties=record["properties"],
        body=record["body"],
        body_bytes=record["original_body_bytes"],
        body_sha256=record["original_body_sha256"],
    )


@dataclass(frozen=True, slots=True)
class Extent:
    """How many dead letters a selection matches, and the id of the newest (None if none)."""

    count: int
    last: int | None


class Claim:
    """A batch of dead letters held in an open transaction: sent on, then deleted, or left.

    `commit()` ends it (what was deleted is gone), `abandon()` rolls it back (every row stays);
    either gives the connection back. `async with claim` does the first, or the second if the
    block raises.
    """

    def __init__(
        self,
        letters: list[DeadLetter],
        *,
        pool: asyncpg.Pool,
        connection: asyncpg.Connection,
        transaction: Any,  # noqa: ANN401  # asyncpg's Transaction, untyped
        locked: bool,
    ) -> None:
        """Hold `letters` in `transaction` on `connection`, taken from `pool`."""
        self.letters = letters
        self._pool = pool
        self._connection: asyncpg.Connection | None = connection
        self._transaction = transaction
        self._locked = locked

    async def delete(self, ids: Sequence[int], *, action: int | None = None) -> None:
        """Delete these rows (counted as replayed): gone at the commit, kept on a rollback.

        With `action`, the rows are counted in that action's record in the same transaction.
        """
        if not self._locked:
            raise NotConnectedError("a dry run's batch deletes nothing")
        if ids and self._connection is not None:
            with translated():
                if action is None:
                    await self._connection.execute(queries.DELETE_REPLAYED, list(ids))
                else:
                    await self._connection.execute(
                        queries.DELETE_REPLAYED_RECORDED, list(ids), action
                    )

    async def commit(self) -> None:
        """Commit, and give the connection back."""
        try:
            with translated():
                await self._transaction.commit()
        finally:
            await self._release()

    async def abandon(self) -> None:
        """Roll back, and give the connection back; never raises (an error is on its way)."""
        try:
            with contextlib.suppress(Exception):
                await self._transaction.rollback()
        finally:
            await self._release()

    async def _release(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self._pool.release(connection)

    async def __aenter__(self) -> Self:
        """The claim itself."""
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        """Commit, or abandon if the block raised."""
        if exc_type is None:
            await self.commit()
        else:
            await self.abandon()


class DeadLetterStore(StoreBase):
    """Reading and deleting the dead-letter table for `task-history dlq`."""

    async def _fetch_filtered(
        self, query: FilteredQuery, selection: Selection, *args: object
    ) -> list[asyncpg.Record]:
        return await self._fetch(
            dead_letter_sql(query, selection), *dead_letter_arguments(selection), *args
        )

    async def dead_letter_census(
        self, selection: Selection = EVERY_LETTER, *, tasks_per_error: int = 3, newest: int = 5
    ) -> Census:
        """The selected letters by error code, largest first, each with its largest tasks.

        Also the `newest` letters stored, newest first; one snapshot for both. The database
        does the counting: the rows never leave it.
        """
        arguments = dead_letter_arguments(selection)
        async with (
            self._connection() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await connection.fetch(
                dead_letter_sql(queries.DEAD_LETTER_GROUPS, selection), *arguments, tasks_per_error
            )
            latest = await connection.fetch(
                dead_letter_sql(queries.DEAD_LETTERS_NEWEST, selection), *arguments, newest
            )
        groups: dict[str, tuple[int, list[tuple[str | None, int]]]] = {}
        for row in rows:  # at most tasks_per_error rows per code, in order
            task = None if row["task_id"] is None else str(row["task_id"])
            groups.setdefault(row["error"], (int(row["of_error"]), []))[1].append((task, row["n"]))
        return Census(
            total=sum(count for count, _ in groups.values()),
            groups=tuple(
                ErrorGroup(error, count, tuple(tasks)) for error, (count, tasks) in groups.items()
            ),
            newest=tuple(letter_of(row) for row in latest),
        )

    async def dead_letter(self, key: str) -> DeadLetter | None:
        """The dead letter whose row id is `key`, else the newest whose message_id is `key`.

        None for a key no letter can have, unasked: longer than an AMQP message id (255
        bytes), or holding NUL or text that is not UTF-8, which PostgreSQL would refuse.
        """
        try:
            encoded = key.encode()
        except UnicodeError:
            return None
        if len(encoded) > MESSAGE_ID_BYTES or "\x00" in key:
            return None
        if key.isascii() and key.isdigit() and int(key) <= LAST_ID:
            rows = await self._fetch(queries.DEAD_LETTER_BY_ID, int(key))
            if rows:
                return letter_of(rows[0])
        rows = await self._fetch(queries.DEAD_LETTER_BY_MESSAGE_ID, key)
        return letter_of(rows[0]) if rows else None

    async def dead_letter_extent(self, selection: Selection = EVERY_LETTER) -> Extent:
        """How many dead letters `selection` matches, and the newest one's id."""
        (row,) = await self._fetch_filtered(queries.DEAD_LETTERS_EXTENT, selection)
        return Extent(count=row["n"], last=row["last"])

    async def claim_dead_letters(
        self,
        selection: Selection,
        *,
        after: int = 0,
        through: int | None = None,
        limit: int,
        lock: bool = True,
    ) -> Claim:
        """Up to `limit` selected letters with ids in (`after`, `through`], oldest first, held.

        The claim is one open transaction that holds the rows (FOR UPDATE SKIP LOCKED: a
        second replay at the same time takes other rows, never these); rows deleted through it
        go at its commit, and if it is abandoned, or the process dies, every row stays. Fewer
        than `limit` letters means no more are free to claim. Without `lock` (a dry run) the
        rows are only read.
        """
        query = queries.DEAD_LETTERS_CLAIM if lock else queries.DEAD_LETTERS_PEEK
        arguments = (*dead_letter_arguments(selection), after, through or LAST_ID, limit)
        pool = self.pool
        with translated():
            connection = await pool.acquire()
        transaction = connection.transaction(readonly=not lock)
        claim = Claim([], pool=pool, connection=connection, transaction=transaction, locked=lock)
        try:
            with translated():
                await transaction.start()
                records = await connection.fetch(dead_letter_sql(query, selection), *arguments)
        except BaseException:
            await claim.abandon()
            raise
        claim.letters = [letter_of(record) for record in records]
        return claim

    async def purge_dead_letters(  # the batch's window, and its record
        self,
        selection: Selection,
        *,
        after: int = 0,
        through: int | None = None,
        limit: int,
        action: int | None = None,
    ) -> tuple[int, int | None]:
        """Delete up to `limit` selected letters with ids in (`after`, `through`], in id order.

        One transaction; rows a replay holds are skipped. Returns how many went and the
        largest id among them (where the next batch starts), None when none went. With
        `action`, they are counted in that action's record in the same transaction.
        """
        window = (after, through or LAST_ID, limit)
        if action is None:
            rows = await self._fetch_filtered(queries.PURGE_DEAD_LETTERS, selection, *window)
        else:
            rows = await self._fetch_filtered(
                queries.PURGE_DEAD_LETTERS_RECORDED, selection, *window, action
            )
        return int(rows[0]["n"]), rows[0]["last"]

    async def dead_letter_page(
        self, selection: Selection, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[ListedLetter], int | None]:
        """A page of the selected letters, newest first, below id `before` if given.

        Without their bodies, headers and properties (a body may be a megabyte); the second
        value is where the next page starts (None on the last).
        """
        rows = await self._fetch_filtered(
            queries.DEAD_LETTERS_PAGE, selection, before or LAST_ID, limit + 1
        )
        listed = [
            ListedLetter(
                DeadLetter(
                    id=row["id"],
                    message_id=row["message_id"],
                    task_id=None if row["task_id"] is None else str(row["task_id"]),
                    routing_key=row["routing_key"],
                    code=row["error"],
                    detail=row["detail"],
                    failed_at=row["failed_at"],
                    replay_count=row["replay_count"],
                    headers={},
                    properties={},
                    body=b"",
                ),
                body_bytes=row["body_bytes"],
            )
            for row in rows[:limit]
        ]
        following = listed[-1].letter.id if len(rows) > limit and listed else None
        return listed, following

    async def dead_letter_span(self, selection: Selection) -> tuple[datetime, datetime] | None:
        """When the oldest and the newest selected letter failed; None when none is selected."""
        (row,) = await self._fetch_filtered(queries.DEAD_LETTERS_SPAN, selection)
        return None if row["oldest"] is None else (row["oldest"], row["newest"])

    async def dead_letter_timeline(  # noqa: PLR0913  # the chart's dimensions
        self,
        selection: Selection,
        *,
        by: TimelineKey,
        bucket: timedelta,
        start: datetime,
        buckets: int,
        keys: int = TOP_KEYS,
    ) -> Timeline:
        """The selected letters per bucket from `start`, by error code or task, top `keys`."""
        query = (
            queries.DEAD_LETTER_TIMELINE_BY_ERROR
            if by == "error"
            else queries.DEAD_LETTER_TIMELINE_BY_TASK
        )
        rows = await self._fetch_filtered(query, selection, bucket, start, keys)
        return timeline_of(
            [(row["at"], row["key"], row["top"], row["n"]) for row in rows],
            by=by,
            bucket=bucket,
            start=start,
            buckets=buckets,
        )

    async def stream_dead_letters(
        self, selection: Selection, *, limit: int | None = None, prefetch: int = 500
    ) -> AsyncGenerator[DeadLetter]:
        """The selected letters in id order, `prefetch` at a time through a server-side cursor.

        Memory stays flat however many match; one read-only REPEATABLE READ transaction gives
        the stream one snapshot. Close the iterator (or read it to the end) to end it.
        """
        async with (
            self._connection() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = connection.cursor(
                dead_letter_sql(queries.DEAD_LETTERS_EXPORT, selection),
                *dead_letter_arguments(selection),
                limit,
                prefetch=prefetch,
            )
            async for record in cursor:
                yield letter_of(record)

    async def dead_letter_totals(self) -> tuple[dict[str, int], int, int]:
        """Dead letters by code, and how many `dlq` replayed and purged, ever (for the metrics)."""
        async with (
            self._connection() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            counts = await connection.fetch(queries.DEAD_LETTERS_BY_CODE)
            totals = await connection.fetchrow(queries.DEAD_LETTER_TOTALS)
        replayed, purged = (0, 0) if totals is None else (totals["replayed"], totals["purged"])
        return {row["error"]: row["n"] for row in counts}, replayed, purged
