"""Expiry: delete entries and dead letters past their retention; forget old received ids."""

from __future__ import annotations

import asyncpg

from consumer.expiry import Expired
from consumer.store import queries
from consumer.store.pool import StoreBase


class ExpiryStore(StoreBase):
    """Deleting expired entries and dead letters, and received ids past their window."""

    async def expire(self, *, batch_size: int = 10_000) -> Expired:
        """Delete every expired entry and dead letter, `batch_size` a transaction; how many of each.

        Received ids older than their window are forgotten too (not counted).
        """
        async with self._connection() as connection:
            deleted = await _expire_on(connection, batch_size)
            await _repeat(connection, queries.FORGET_RECEIVED_BATCH, batch_size)
            return deleted

    async def forget_received(self, *, batch_size: int = 10_000) -> int:
        """Forget the received ids older than the redelivery window; how many."""
        async with self._connection() as connection:
            return await _repeat(connection, queries.FORGET_RECEIVED_BATCH, batch_size)

    async def expire_exclusively(self, *, batch_size: int = 10_000) -> Expired | None:
        """Like `expire`, unless another replica is expiring right now: then None at once."""
        async with self._connection() as connection:
            if not await connection.fetchval(queries.TRY_LOCK, queries.EXPIRE_LOCK):
                return None
            try:
                return await _expire_on(connection, batch_size)
            finally:
                await connection.execute(queries.UNLOCK, queries.EXPIRE_LOCK)


async def _expire_on(connection: asyncpg.Connection, batch_size: int) -> Expired:
    return Expired(
        entries=await _repeat(connection, queries.EXPIRE_BATCH, batch_size),
        dead_letters=await _repeat(connection, queries.EXPIRE_DEAD_LETTERS_BATCH, batch_size),
    )


async def _repeat(connection: asyncpg.Connection, query: str, batch_size: int) -> int:
    """Run a batch function until it deletes fewer than `batch_size`; the total deleted."""
    # Each batch is its own statement, so its own transaction: locks stay short, and what is
    # deleted stays deleted if a later batch fails.
    total = 0
    while True:
        deleted = int(await connection.fetchval(query, batch_size))
        total += deleted
        if deleted < batch_size:
            return total
