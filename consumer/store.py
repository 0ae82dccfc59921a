"""The only module that talks to PostgreSQL: migrations, reads, deletes and expiry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self
from uuid import UUID

import asyncpg

from consumer import migrations
from consumer.entries import HistoryEntry, NewEntry
from consumer.errors import (
    ConcurrencyConflictError,
    ConfigurationError,
    DatabaseUnavailableError,
    DataRejectedError,
    NotMigratedError,
    StoreError,
)
from consumer.logs import redact

# Advisory lock keys (pg_advisory_lock's bigint form), one per job that must run alone.
MIGRATE_LOCK = 0x7461736B_0001
EXPIRE_LOCK = 0x7461736B_0002

_ENTRY = (
    "SELECT id, task_id, workspace_id, session_id, context_type, content, metadata,"
    " created_at, expires_at FROM task_build_history"
)
# Every read hides expired rows, whether or not the expiry job has run yet.
_FIND_BY_TASK = (
    _ENTRY + " WHERE task_id = $1 AND expires_at > now() ORDER BY created_at, seq LIMIT $2"
)
_FIND_BY_WORKSPACE = (
    _ENTRY + " WHERE workspace_id = $1 AND expires_at > now() ORDER BY created_at, seq LIMIT $2"
)
_FIND_BY_SESSION = (
    _ENTRY + " WHERE session_id = $1 AND expires_at > now() ORDER BY created_at, seq LIMIT $2"
)
_COUNT_BY_TASK = "SELECT count(*) FROM task_build_history WHERE task_id = $1 AND expires_at > now()"
_OLDEST = "SELECT min(created_at) FROM task_build_history WHERE expires_at > now()"
_OLDEST_OF_TASK = (
    "SELECT created_at FROM task_build_history WHERE task_id = $1 AND expires_at > now()"
    " ORDER BY created_at, seq LIMIT 1"
)
# One statement per batch. Rows keep their array order (the arrival sequence follows it), the
# retention is read once per statement, and a redelivered id is skipped, not stored twice.
_INSERT_ENTRIES = """
INSERT INTO task_build_history (id, task_id, workspace_id, session_id, context_type, content,
                                metadata, created_at, expires_at)
SELECT r.id, r.task_id, r.workspace_id, r.session_id, r.context_type, r.content,
       r.metadata::jsonb, r.created_at, r.created_at + s.retention
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[]) WITH ORDINALITY
         AS r (id, task_id, workspace_id, session_id, context_type, content, metadata,
               created_at, n)
CROSS JOIN task_build_history_settings AS s
ORDER BY r.n
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
_DELETE_TASK_HISTORY = "SELECT task_build_history_delete_task_v1($1)"
_EXPIRE_BATCH = "SELECT task_build_history_expire_batch_v1($1)"
_CREATE_TASKS = "INSERT INTO tasks (id) SELECT unnest($1::uuid[]) ON CONFLICT (id) DO NOTHING"
_MISSING_TASKS = (
    "SELECT t.id FROM unnest($1::uuid[]) AS t (id)"
    " WHERE NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = t.id)"
)
_LIMITS = "SELECT max_entries_per_task, retention FROM task_build_history_settings"

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS task_history_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_APPLIED = "SELECT name, checksum FROM task_history_migrations"
_HAS_MIGRATIONS_TABLE = "SELECT to_regclass('task_history_migrations') IS NOT NULL"
_RECORD_MIGRATION = "INSERT INTO task_history_migrations (name, checksum) VALUES ($1, $2)"
_LOCK = "SELECT pg_advisory_lock($1)"
_TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
_UNLOCK = "SELECT pg_advisory_unlock($1)"


@contextmanager
def _translated() -> Iterator[None]:
    """Turn driver and socket errors into the project's, with no secret in the message."""
    try:
        yield
    except asyncpg.ClientConfigurationError as exc:
        raise ConfigurationError(f"invalid database URL: {redact(str(exc))}") from exc
    except asyncpg.ForeignKeyViolationError as exc:
        # The task was checked a moment ago and deleted since: looking again sorts it out.
        raise ConcurrencyConflictError(redact(str(exc))) from exc
    except (
        asyncpg.DataError,
        asyncpg.IntegrityConstraintViolationError,
        asyncpg.exceptions.ProgramLimitExceededError,
    ) as exc:
        raise DataRejectedError(redact(str(exc))) from exc
    except asyncpg.InterfaceError as exc:
        if isinstance(exc, ValueError):  # the driver could not encode a value of the row
            raise DataRejectedError(redact(str(exc))) from exc
        raise DatabaseUnavailableError(f"database unavailable: {redact(str(exc))}") from exc
    except (
        OSError,
        TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.TooManyConnectionsError,
    ) as exc:
        detail = redact(str(exc)) or type(exc).__name__
        raise DatabaseUnavailableError(f"database unavailable: {detail}") from exc
    except asyncpg.exceptions.TransactionRollbackError as exc:
        raise ConcurrencyConflictError(redact(str(exc))) from exc
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
        raise NotMigratedError(
            f"{redact(str(exc))}: the database is not migrated; run `task-history migrate`"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(redact(str(exc))) from exc


async def _init_connection(connection: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects rather than text.
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


def _entry(record: asyncpg.Record) -> HistoryEntry:
    return HistoryEntry.model_validate(dict(record.items()))


class Store:
    """A pool of connections to the history database, and every query the project runs."""

    def __init__(
        self, dsn: str, *, max_connections: int = 4, command_timeout: float | None = None
    ) -> None:
        """Prepare a store for `dsn`; `open()` (or `async with`) connects.

        `command_timeout` bounds each statement in seconds: a server that stops answering
        without closing the connection (a partition) becomes an error instead of a stall.
        """
        self._dsn = dsn
        self._max_connections = max_connections
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Connect the pool."""
        with _translated():
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._max_connections,
                init=_init_connection,
                command_timeout=self._command_timeout,
                timeout=self._command_timeout or 60,
            )

    async def close(self, *, grace: float = 10) -> None:
        """Close every connection; after `grace` seconds, drop the ones that don't answer."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), grace)
            except TimeoutError:
                pool.terminate()

    def terminate(self) -> None:
        """Drop every connection at once, mid-query or not, without waiting for the server."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()

    async def reconnect(self) -> None:
        """Replace every pooled connection with a new one as it is next used."""
        if self._pool is not None:
            await self._pool.expire_connections()

    async def __aenter__(self) -> Self:
        """Open the store."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool:
        """The open pool; using a store before `open()` is a bug."""
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        with _translated():
            return await self.pool.fetch(query, *args)  # type: ignore[no-any-return]

    async def _fetchval(self, query: str, *args: object) -> Any:  # noqa: ANN401  # driver values
        with _translated():
            return await self.pool.fetchval(query, *args)

    # Schema

    async def migrate(self, available: Sequence[migrations.Migration] | None = None) -> list[str]:
        """Apply the pending migrations in order, one transaction each; return their names.

        Several replicas may run this at once: an advisory lock lets one work while the
        others wait, and then find nothing left to do.
        """
        available = migrations.discover() if available is None else available
        applied_now: list[str] = []
        with _translated():
            async with self.pool.acquire() as connection:
                await connection.execute(_LOCK, MIGRATE_LOCK)
                try:
                    await connection.execute(_MIGRATIONS_TABLE)
                    applied = dict(await connection.fetch(_APPLIED))
                    for migration in migrations.pending(available, applied):
                        async with connection.transaction():
                            try:
                                await connection.execute(migration.sql)
                            except asyncpg.PostgresError as exc:
                                raise StoreError(
                                    f"migration {migration.name} failed: {redact(str(exc))}"
                                ) from exc
                            await connection.execute(
                                _RECORD_MIGRATION, migration.name, migration.checksum
                            )
                        applied_now.append(migration.name)
                finally:
                    await connection.execute(_UNLOCK, MIGRATE_LOCK)
        return applied_now

    async def check_schema(self, available: Sequence[migrations.Migration] | None = None) -> None:
        """Raise NotMigratedError unless every migration this release ships is applied."""
        available = migrations.discover() if available is None else available
        applied: dict[str, str] = {}
        if await self._fetchval(_HAS_MIGRATIONS_TABLE):
            applied = dict(await self._fetch(_APPLIED))
        migrations.check_applied(available, applied)

    async def limits(self) -> tuple[int, timedelta]:
        """The cap on entries per task, and the retention, as the database has them now."""
        rows = await self._fetch(_LIMITS)
        return rows[0]["max_entries_per_task"], rows[0]["retention"]

    # Tasks

    async def create_task(self, task_id: UUID) -> None:
        """Create the task row if it doesn't exist."""
        await self.create_tasks([task_id])

    async def create_tasks(self, task_ids: Collection[UUID]) -> None:
        """Create the task rows that don't exist."""
        with _translated():
            await self.pool.execute(_CREATE_TASKS, list(task_ids))

    async def missing_tasks(self, task_ids: Collection[UUID]) -> set[UUID]:
        """Which of `task_ids` have no row in `tasks`."""
        if not task_ids:
            return set()
        return {record["id"] for record in await self._fetch(_MISSING_TASKS, list(task_ids))}

    # Writes

    async def insert_entries(self, entries: Sequence[NewEntry]) -> set[UUID]:
        """Insert entries in one statement, in order; return the ids that were new."""
        if not entries:
            return set()
        columns = list(zip(*entries, strict=True))
        records = await self._fetch(_INSERT_ENTRIES, *columns)
        return {record["id"] for record in records}

    # Reads: oldest first, ties in arrival order, expired entries never shown

    async def find_by_task(self, task_id: UUID, *, limit: int | None = None) -> list[HistoryEntry]:
        """A task's entries, oldest first."""
        return [_entry(r) for r in await self._fetch(_FIND_BY_TASK, task_id, limit)]

    async def find_by_workspace(
        self, workspace_id: UUID, *, limit: int | None = None
    ) -> list[HistoryEntry]:
        """A workspace's entries across its tasks, oldest first."""
        return [_entry(r) for r in await self._fetch(_FIND_BY_WORKSPACE, workspace_id, limit)]

    async def find_by_session(
        self, session_id: UUID, *, limit: int | None = None
    ) -> list[HistoryEntry]:
        """A session's entries, oldest first."""
        return [_entry(r) for r in await self._fetch(_FIND_BY_SESSION, session_id, limit)]

    async def count_by_task(self, task_id: UUID) -> int:
        """How many entries a task has."""
        return int(await self._fetchval(_COUNT_BY_TASK, task_id))

    async def oldest_entry_date(self, task_id: UUID | None = None) -> datetime | None:
        """When the oldest entry (of one task, or of all) was created; None when there is none."""
        if task_id is None:
            oldest: datetime | None = await self._fetchval(_OLDEST)
        else:
            oldest = await self._fetchval(_OLDEST_OF_TASK, task_id)
        return oldest

    # Deletes

    async def delete_by_task(self, task_id: UUID) -> int:
        """Delete a task's whole history; return how many entries went."""
        return int(await self._fetchval(_DELETE_TASK_HISTORY, task_id))

    async def expire(self, *, batch_size: int = 10_000) -> int:
        """Delete every expired entry, `batch_size` per transaction; return how many went."""
        with _translated():
            async with self.pool.acquire() as connection:
                return await _expire_on(connection, batch_size)

    async def expire_exclusively(self, *, batch_size: int = 10_000) -> int | None:
        """Like `expire`, unless another replica is expiring right now: then None at once."""
        with _translated():
            async with self.pool.acquire() as connection:
                if not await connection.fetchval(_TRY_LOCK, EXPIRE_LOCK):
                    return None
                try:
                    return await _expire_on(connection, batch_size)
                finally:
                    await connection.execute(_UNLOCK, EXPIRE_LOCK)


async def _expire_on(connection: asyncpg.Connection, batch_size: int) -> int:
    total = 0
    while True:
        deleted = int(await connection.fetchval(_EXPIRE_BATCH, batch_size))
        total += deleted
        if deleted < batch_size:
            return total
