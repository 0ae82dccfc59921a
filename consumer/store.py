"""The only module that talks to PostgreSQL: migrations, reads, deletes and expiry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Collection, Iterator, Sequence
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
from consumer.pages import Cursor, HistoryQuery, Page
from consumer.redaction import redact

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

# pg_cron. Its library, when preloaded, defines cron.database_name: the one database of the
# server where its jobs table lives. Jobs there may run in any database of the server.
_CRON_PLACE = (
    "SELECT current_database() AS here, current_schema() AS schema,"
    " current_setting('cron.database_name', true) AS cron_database"
)
_HAS_PG_CRON = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron')"
_CREATE_PG_CRON = "CREATE EXTENSION IF NOT EXISTS pg_cron"
_CRON_JOB_IDS = "SELECT jobid FROM cron.job WHERE jobname = $1"
_CRON_UNSCHEDULE = "SELECT cron.unschedule($1::bigint)"
# cron.schedule is open to any role with USAGE on schema cron, but only runs in its own
# database; cron.schedule_in_database reaches the others and is a superuser's by default.
_CRON_SCHEDULE = "SELECT cron.schedule($1, $2, $3)"
_CRON_SCHEDULE_IN_DATABASE = "SELECT cron.schedule_in_database($1, $2, $3, $4)"
_EXPIRY_JOB = "SELECT job_name FROM task_build_history_expiry_job"
_EXPIRY_JOB_SILENT = (
    "SELECT greatest(last_run_at, registered_at) < now() - $1::interval"
    " FROM task_build_history_expiry_job"
)
_RECORD_EXPIRY_JOB = """
INSERT INTO task_build_history_expiry_job (job_name, cron_database, schedule)
VALUES ($1, $2, $3)
ON CONFLICT (singleton) DO UPDATE
SET job_name = excluded.job_name, cron_database = excluded.cron_database,
    schedule = excluded.schedule, registered_at = now()
"""
_FORGET_EXPIRY_JOB = "DELETE FROM task_build_history_expiry_job RETURNING job_name, cron_database"

# Paged, filtered and streamed reads. The text of these queries is assembled only from the
# constant fragments below, picked by which filters are present, and every value travels as a
# numbered parameter: all nine ($1 to $9) are always sent, and an absent filter's fragment
# merely checks that its parameter is NULL. Nothing a caller passes ever becomes SQL text, and
# the fragments of present filters stay plain comparisons the indexes can serve.
_READ_SELECT = (
    "SELECT id, task_id, workspace_id, session_id, context_type, content, metadata,"
    " created_at, expires_at, seq FROM task_build_history WHERE expires_at > now()"
)
_READ_FILTERS = (  # (fragment when the filter is given, fragment when it is not)
    (" AND task_id = $1", " AND $1::uuid IS NULL"),
    (" AND workspace_id = $2", " AND $2::uuid IS NULL"),
    (" AND session_id = $3", " AND $3::uuid IS NULL"),
    (" AND context_type = ANY ($4::text[])", " AND $4::text[] IS NULL"),
    (" AND created_at >= $5", " AND $5::timestamptz IS NULL"),
    (" AND created_at < $6", " AND $6::timestamptz IS NULL"),
)
_READ_AFTER_OLDEST_FIRST = " AND (created_at, seq) > ($7::timestamptz, $8::bigint)"
_READ_AFTER_NEWEST_FIRST = " AND (created_at, seq) < ($7::timestamptz, $8::bigint)"
_READ_FROM_START = " AND $7::timestamptz IS NULL AND $8::bigint IS NULL"
_READ_OLDEST_FIRST = " ORDER BY created_at, seq LIMIT $9"
_READ_NEWEST_FIRST = " ORDER BY created_at DESC, seq DESC LIMIT $9"
_FIND_BY_IDS = (
    _ENTRY + " WHERE id = ANY ($1::uuid[]) AND expires_at > now() ORDER BY created_at, seq"
)
# What `follow` reads on each notification: the task's entries in arrival order. A task holds
# at most the cap (100 by default), so reading them all is cheap, and it is exact where
# `seq > last seen` is not: two writers can commit in the other order than they drew seq.
_FOLLOW_TASK = _ENTRY + " WHERE task_id = $1 AND expires_at > now() ORDER BY seq"
# The channel sql/0002_notify.sql notifies once per task per INSERT or COPY statement.
NOTIFY_CHANNEL = "task_build_history"
# Whether that migration is applied; readable by any role, unlike the migrations table.
_HAS_NOTIFY = "SELECT to_regprocedure('task_build_history_notify_v1()') IS NOT NULL"

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


def read_sql(query: HistoryQuery) -> str:
    """The text of the read `query` asks for, from constant fragments only (see _READ_SELECT)."""
    given = (
        query.task_id,
        query.workspace_id,
        query.session_id,
        query.context_types or None,
        query.since,
        query.until,
    )
    parts = [_READ_SELECT]
    parts.extend(
        when if value is not None else otherwise
        for value, (when, otherwise) in zip(given, _READ_FILTERS, strict=True)
    )
    if query.after is None:
        parts.append(_READ_FROM_START)
    else:
        parts.append(_READ_AFTER_NEWEST_FIRST if query.newest_first else _READ_AFTER_OLDEST_FIRST)
    parts.append(_READ_NEWEST_FIRST if query.newest_first else _READ_OLDEST_FIRST)
    return "".join(parts)


def read_arguments(query: HistoryQuery, *, limit: int | None) -> tuple[object, ...]:
    """The nine parameters of `read_sql(query)`, in order; `limit` None reads to the end."""
    after = query.after
    return (
        query.task_id,
        query.workspace_id,
        query.session_id,
        [context_type.value for context_type in query.context_types] or None,
        query.since,
        query.until,
        None if after is None else after.created_at,
        None if after is None else after.seq,
        limit,
    )


def _entry_and_seq(record: asyncpg.Record) -> tuple[HistoryEntry, int]:
    values = dict(record.items())
    seq = values.pop("seq")
    return HistoryEntry.model_validate(values), seq


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

    async def ping(self, *, within: float = 2) -> None:
        """Run a trivial query; DatabaseUnavailableError unless it answers within `within` s."""
        with _translated():
            # The wait for a free connection counts too: a busy or hung pool is not ready.
            async with self.pool.acquire(timeout=within) as connection:
                await connection.fetchval("SELECT 1", timeout=within)

    # pg_cron

    async def cron_place(self) -> tuple[str, str, str | None]:
        """This database, its schema, and pg_cron's database (None: pg_cron is not loaded)."""
        rows = await self._fetch(_CRON_PLACE)
        return rows[0]["here"], rows[0]["schema"], rows[0]["cron_database"]

    async def create_pg_cron(self) -> None:
        """Create the pg_cron extension in this database if it isn't there (a superuser's job)."""
        if not await self._fetchval(_HAS_PG_CRON):
            with _translated():
                await self.pool.execute(_CREATE_PG_CRON)

    async def schedule_cron_job(
        self, name: str, *, schedule: str, command: str, database: str | None = None
    ) -> int:
        """Register (or replace) the pg_cron job `name`; in `database` if not this one."""
        with _translated():
            async with self.pool.acquire() as connection, connection.transaction():
                for record in await connection.fetch(_CRON_JOB_IDS, name):
                    await connection.execute(_CRON_UNSCHEDULE, record["jobid"])
                if database is None:
                    return int(await connection.fetchval(_CRON_SCHEDULE, name, schedule, command))
                return int(
                    await connection.fetchval(
                        _CRON_SCHEDULE_IN_DATABASE, name, schedule, command, database
                    )
                )

    async def unschedule_cron_job(self, name: str) -> bool:
        """Remove the pg_cron job `name`; whether there was one."""
        with _translated():
            async with self.pool.acquire() as connection, connection.transaction():
                if not await connection.fetchval(_HAS_PG_CRON):
                    return False
                records = await connection.fetch(_CRON_JOB_IDS, name)
                for record in records:
                    await connection.execute(_CRON_UNSCHEDULE, record["jobid"])
                return bool(records)

    async def expiry_job(self) -> str | None:
        """The pg_cron job that runs expiry for this database, if one is registered."""
        job: str | None = await self._fetchval(_EXPIRY_JOB)
        return job

    async def expiry_job_silent(self, *, longer_than: timedelta) -> bool:
        """Whether the registered job has neither run nor been registered for `longer_than`."""
        return bool(await self._fetchval(_EXPIRY_JOB_SILENT, longer_than))

    async def record_expiry_job(self, name: str, *, cron_database: str, schedule: str) -> None:
        """Note in this database that pg_cron runs its expiry: the consumers stand down."""
        with _translated():
            await self.pool.execute(_RECORD_EXPIRY_JOB, name, cron_database, schedule)

    async def forget_expiry_job(self) -> tuple[str, str] | None:
        """Remove that note; the job's name and pg_cron database, if there was one."""
        rows = await self._fetch(_FORGET_EXPIRY_JOB)
        return (rows[0]["job_name"], rows[0]["cron_database"]) if rows else None

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

    async def find_page(self, query: HistoryQuery) -> Page:
        """One page of the entries `query` selects, and the cursor of the next, if any."""
        # One row more than asked says whether another page follows.
        limit = None if query.limit is None else query.limit + 1
        records = await self._fetch(read_sql(query), *read_arguments(query, limit=limit))
        rows = [_entry_and_seq(record) for record in records]
        following = None
        if query.limit is not None and len(rows) > query.limit:
            rows = rows[: query.limit]
            last, seq = rows[-1]
            following = Cursor(last.created_at, seq, newest_first=query.newest_first)
        return Page(entries=[entry for entry, _ in rows], next=following)

    async def stream(
        self, query: HistoryQuery, *, prefetch: int = 1000
    ) -> AsyncGenerator[HistoryEntry]:
        """Every entry `query` selects, fetched `prefetch` at a time through a server-side cursor.

        Memory stays bounded however many entries match; one read-only REPEATABLE READ
        transaction gives the whole stream one snapshot. Close the iterator (or read it to the
        end) to give the connection back.
        """
        with _translated():
            async with (
                self.pool.acquire() as connection,
                connection.transaction(isolation="repeatable_read", readonly=True),
            ):
                cursor = connection.cursor(
                    read_sql(query), *read_arguments(query, limit=query.limit), prefetch=prefetch
                )
                async for record in cursor:
                    yield _entry_and_seq(record)[0]

    async def find_by_ids(self, ids: Collection[UUID]) -> list[HistoryEntry]:
        """The entries with these ids that are stored (and not expired), oldest first."""
        return [_entry(r) for r in await self._fetch(_FIND_BY_IDS, list(ids))]

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

        with _translated():
            async with self.pool.acquire() as connection:
                await _require_notifications(connection)
                await connection.add_listener(NOTIFY_CHANNEL, on_notify)
                connection.add_termination_listener(on_lost)
                try:
                    current = await connection.fetch(_FIND_BY_TASK, task_id, None)
                    seen = {record["id"] for record in current}
                    if from_start:
                        for record in current:
                            yield _entry(record)
                    while True:
                        await woken.wait()
                        woken.clear()
                        if lost.is_set():
                            raise DatabaseUnavailableError("database unavailable: connection lost")
                        records = await connection.fetch(_FOLLOW_TASK, task_id)
                        fresh = [record for record in records if record["id"] not in seen]
                        # Keep only ids still stored: a trimmed or expired id never comes back.
                        seen = {record["id"] for record in records}
                        for record in fresh:
                            yield _entry(record)
                finally:
                    connection.remove_termination_listener(on_lost)
                    if not connection.is_closed():
                        await connection.remove_listener(NOTIFY_CHANNEL, on_notify)

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


async def _require_notifications(connection: asyncpg.Connection) -> None:
    """Raise NotMigratedError unless sql/0002_notify.sql is applied: nothing else wakes a tail."""
    if not await connection.fetchval(_HAS_NOTIFY):
        raise NotMigratedError("the database lacks sql/0002_notify.sql: run `task-history migrate`")


async def _expire_on(connection: asyncpg.Connection, batch_size: int) -> int:
    total = 0
    while True:
        deleted = int(await connection.fetchval(_EXPIRE_BATCH, batch_size))
        total += deleted
        if deleted < batch_size:
            return total
