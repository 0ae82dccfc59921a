"""The schema: apply the migrations, check they are applied, read the limits they set."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from consumer import migrations
from consumer.errors import StoreError
from consumer.redaction import redact
from consumer.store import queries
from consumer.store.pool import StoreBase


class SchemaStore(StoreBase):
    """Migrations and the settings table."""

    async def migrate(self, available: Sequence[migrations.Migration] | None = None) -> list[str]:
        """Apply the pending migrations in order, one transaction each; return their names.

        Several replicas may run this at once: an advisory lock lets one work while the
        others wait, and then find nothing left to do.
        """
        available = migrations.discover() if available is None else available
        applied_now: list[str] = []
        async with self._connection() as connection:
            await connection.execute(queries.LOCK, queries.MIGRATE_LOCK)
            try:
                await connection.execute(queries.MIGRATIONS_TABLE)
                applied = dict(await connection.fetch(queries.APPLIED))
                for migration in migrations.pending(available, applied):
                    async with connection.transaction():
                        try:
                            await connection.execute(migration.sql)
                        except asyncpg.PostgresError as exc:
                            # Named, and a StoreError whatever the cause: a broken migration
                            # file is not a database that lacks one.
                            raise StoreError(
                                f"migration {migration.name} failed: {redact(str(exc))}"
                            ) from exc
                        await connection.execute(
                            queries.RECORD_MIGRATION, migration.name, migration.checksum
                        )
                    applied_now.append(migration.name)
            finally:
                await connection.execute(queries.UNLOCK, queries.MIGRATE_LOCK)
        return applied_now

    async def check_schema(self, available: Sequence[migrations.Migration] | None = None) -> None:
        """Raise NotMigratedError unless every migration this release ships is applied."""
        available = migrations.discover() if available is None else available
        applied: dict[str, str] = {}
        if await self._fetchval(queries.HAS_MIGRATIONS_TABLE):
            applied = dict(await self._fetch(queries.APPLIED))
        migrations.check_applied(available, applied)

    async def replication(self) -> tuple[int, bool]:
        """How many standbys the database streams to, and whether commits wait for one."""
        rows = await self._fetch(queries.REPLICATION)
        return int(rows[0]["standbys"]), bool(rows[0]["synchronous"])

    async def limits(self) -> tuple[int, timedelta]:
        """The cap on entries per task, and the retention, as the database has them now."""
        rows = await self._fetch(queries.LIMITS)
        return rows[0]["max_entries_per_task"], rows[0]["retention"]

    async def header_key(self) -> bytes:
        """This deployment's key for signing the consumer's own headers (sql/0008)."""
        return bytes(await self._fetchval(queries.HEADER_KEY))
