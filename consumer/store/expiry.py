"""Expiry: delete entries and dead letters past their retention, one replica at a time."""

from __future__ import annotations

import asyncpg

from consumer.store import queries
from consumer.store.pool import StoreBase


class ExpiryStore(StoreBase):
    """Deleting expired entries and dead letters."""

    async def expire(self, *, batch_size: int = 10_000) -> int:
        """Delete every expired entry and dead letter, `batch_size` per transaction; how many."""
        async with self._connection() as connection:
            return await _expire_on(connection, batch_size)

    async def expire_exclusively(self, *, batch_size: int = 10_000) -> int | None:
        """Like `expire`, unless another replica is expiring right now: then None at once."""
        async with self._connection() as connection:
            if not await connection.fetchval(queries.TRY_LOCK, queries.EXPIRE_LOCK):
                return None
            try:
                return await _expire_on(connection, batch_size)
            finally:
                await connection.execute(queries.UNLOCK, queries.EXPIRE_LOCK)


async def _expire_on(connection: asyncpg.Connection, batch_size: int) -> int:
    # Each batch is its own statement, so its own transaction: locks stay short, and what is
    # deleted stays deleted if a later batch fails.
    total = 0
    for query in (queries.EXPIRE_BATCH, queries.EXPIRE_DEAD_LETTERS_BATCH):
        while True:
            deleted = int(await connection.fetchval(query, batch_size))
            total += deleted
            if deleted < batch_size:
                break
    return total
