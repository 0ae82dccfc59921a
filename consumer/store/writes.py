"""Writes: the tasks entries belong to, the entries themselves, and deleting a task's history."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from uuid import UUID

from consumer.deadletters import DeadLetter, dead_letter_columns
from consumer.entries import NewEntry
from consumer.store import queries
from consumer.store.pool import StoreBase


class WriteStore(StoreBase):
    """Task rows, entry inserts and deletes."""

    async def create_task(self, task_id: UUID) -> None:
        """Create the task row if it doesn't exist."""
        await self.create_tasks([task_id])

    async def create_tasks(self, task_ids: Collection[UUID]) -> None:
        """Create the task rows that don't exist."""
        await self._execute(queries.CREATE_TASKS, list(task_ids))

    async def missing_tasks(self, task_ids: Collection[UUID]) -> set[UUID]:
        """Which of `task_ids` have no row in `tasks`."""
        if not task_ids:
            return set()
        records = await self._fetch(queries.MISSING_TASKS, list(task_ids))
        return {record["id"] for record in records}

    async def insert_entries(self, entries: Sequence[NewEntry]) -> set[UUID]:
        """Insert entries in one statement, in order; return the ids that were new."""
        return await self.write_batch(entries, [])

    async def write_batch(
        self, entries: Sequence[NewEntry], dead_letters: Sequence[DeadLetter]
    ) -> set[UUID]:
        """Insert a batch's entries and dead letters in one transaction; the new entry ids.

        One commit for the whole batch: a message is acked after it, whichever table it went to.
        """
        if not entries and not dead_letters:
            return set()
        # One array per column: the statement unnests them back into rows.
        columns = list(zip(*entries, strict=True))
        if not dead_letters:
            # One statement is its own transaction: no BEGIN and COMMIT round trips for the
            # common batch, all of it valid.
            return {record["id"] for record in await self._fetch(queries.INSERT_ENTRIES, *columns)}
        async with self._connection() as connection, connection.transaction():
            records = []
            if entries:
                records = await connection.fetch(queries.INSERT_ENTRIES, *columns)
            if dead_letters:
                await connection.execute(
                    queries.INSERT_DEAD_LETTERS, *dead_letter_columns(dead_letters)
                )
        return {record["id"] for record in records}

    async def delete_by_task(self, task_id: UUID) -> int:
        """Delete a task's whole history; return how many entries went."""
        return int(await self._fetchval(queries.DELETE_TASK_HISTORY, task_id))
