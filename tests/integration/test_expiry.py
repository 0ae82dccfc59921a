"""Expiry: rows past their expires_at vanish from reads at once and from disk when the job runs."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from consumer.cli import main
from consumer.store import Store
from tests.helpers import at, insert_rows, kept_ids, new_task, on_database
from tests.letters import letter

DAYS_AGO_25 = datetime.now(UTC) - timedelta(days=25)


async def insert_full(
    sql: asyncpg.Connection, task: uuid.UUID, created_at: datetime, **ids: uuid.UUID | None
) -> uuid.UUID:
    """Insert one entry with a workspace and session; return its id."""
    return await sql.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO task_build_history (task_id, workspace_id, session_id, context_type,"
        " content, created_at) VALUES ($1, $2, $3, 'error', 'x', $4) RETURNING id",
        task,
        ids.get("workspace"),
        ids.get("session"),
        created_at,
    )


class TestExpiresAt:
    """How expires_at is set."""

    async def test_created_at_plus_retention(self, sql: asyncpg.Connection) -> None:
        """Left out, expires_at is created_at plus the 20-day retention."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, at(0))])
        row = await sql.fetchrow("SELECT created_at, expires_at FROM task_build_history")
        assert row is not None
        assert row["expires_at"] - row["created_at"] == timedelta(days=20)

    async def test_retention_is_a_database_setting(self, sql: asyncpg.Connection) -> None:
        """A new retention applies to rows inserted afterwards and to those already there."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, at(0))])
        await sql.execute("UPDATE task_build_history_settings SET retention = interval '3 hours'")
        await insert_rows(sql, [(task, at(1))])
        gaps = await sql.fetch("SELECT expires_at - created_at AS gap FROM task_build_history")
        assert [r["gap"] for r in gaps] == [timedelta(hours=3)] * 2


class TestExpire:
    """The expiry job and what readers see before it runs."""

    async def test_deletes_only_expired_rows_and_counts_them(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """expire() deletes the expired rows, keeps the others, and returns how many went."""
        a, b = await new_task(sql), await new_task(sql)
        await insert_rows(sql, [(a, DAYS_AGO_25 + timedelta(seconds=i)) for i in range(7)])
        await insert_rows(sql, [(b, DAYS_AGO_25)])
        fresh = await insert_rows(sql, [(a, at(i)) for i in range(3)])
        assert await store.expire() == (8, 0)
        assert await kept_ids(sql, a) == fresh
        assert await kept_ids(sql, b) == []
        assert await store.expire() == (0, 0)

    async def test_dead_letters_past_their_retention_go_too(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """Dead letters older than dead_letter_retention are deleted and counted; newer stay."""
        await sql.execute(
            "UPDATE task_build_history_settings SET dead_letter_retention = interval '7 days'"
        )
        old = [letter(n, failed_at=datetime.now(UTC) - timedelta(days=8)) for n in range(3)]
        await store.write_batch([], [*old, letter(3, failed_at=datetime.now(UTC))])
        assert await store.expire(batch_size=2) == (0, 3)
        remaining = await sql.fetch("SELECT message_id FROM task_build_history_dead_letters")
        assert [row["message_id"] for row in remaining] == ["m3"]

    async def test_works_in_bounded_batches(self, store: Store, sql: asyncpg.Connection) -> None:
        """A batch size smaller than the backlog still deletes all of it."""
        tasks = [await new_task(sql) for _ in range(3)]
        await insert_rows(sql, [(tasks[i % 3], DAYS_AGO_25) for i in range(20)])
        assert await store.expire(batch_size=7) == (20, 0)
        assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 0

    async def test_counts_stay_exact_after_expiry(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """After expiry a task fills up to exactly the cap again."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, DAYS_AGO_25 + timedelta(seconds=i)) for i in range(60)])
        await insert_rows(sql, [(task, at(i)) for i in range(40)])
        assert await store.expire() == (60, 0)
        await insert_rows(sql, [(task, at(100 + i)) for i in range(60)])
        assert len(await kept_ids(sql, task)) == 100

    async def test_reads_hide_expired_rows_before_expiry_runs(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """Every read leaves out expired rows although they are still in the table."""
        task, workspace, session = await new_task(sql), uuid.uuid4(), uuid.uuid4()
        await insert_full(sql, task, DAYS_AGO_25, workspace=workspace, session=session)
        live = await insert_full(sql, task, at(0), workspace=workspace, session=session)
        assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 2
        assert [e.id for e in await store.find_by_task(task)] == [live]
        assert [e.id for e in await store.find_by_workspace(workspace)] == [live]
        assert [e.id for e in await store.find_by_session(session)] == [live]
        assert await store.count_by_task(task) == 1
        assert await store.oldest_entry_date(task) == at(0)
        assert await store.oldest_entry_date() == at(0)

    async def test_runs_beside_writers_without_deadlock(
        self, database_url: str, store: Store, sql: asyncpg.Connection
    ) -> None:
        """Expiry and 4 writers on the same tasks finish without error, counts exact."""
        tasks = [await new_task(sql) for _ in range(4)]
        await insert_rows(sql, [(tasks[i % 4], DAYS_AGO_25) for i in range(400)])

        async def writer(n: int) -> None:
            connection = await asyncpg.connect(database_url)
            try:
                for k in range(20):
                    batch = [(tasks[(n + j) % 4], at(n * 1000 + k * 10 + j)) for j in range(5)]
                    await insert_rows(connection, batch)
            finally:
                await connection.close()

        await asyncio.gather(store.expire(batch_size=25), *(writer(n) for n in range(4)))
        for task in tasks:
            assert await store.count_by_task(task) == 100
        await store.expire()
        counted = await sql.fetch(
            "SELECT c.entries, (SELECT count(*) FROM task_build_history h"
            " WHERE h.task_id = c.task_id) AS actual FROM task_build_history_counts c"
        )
        assert all(r["entries"] == r["actual"] for r in counted)


class TestExpireCommand:
    """`task-history expire`."""

    def test_prints_the_count(self, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """It prints how many rows it deleted and exits 0."""

        async def seed(connection: asyncpg.Connection) -> None:
            task = await new_task(connection)
            await insert_rows(connection, [(task, DAYS_AGO_25)] * 3)

        on_database(database_url, seed)
        assert main(["--database-url", database_url, "expire"]) == 0
        assert capsys.readouterr().out == (
            "deleted 3 expired entries and 0 dead letters past their retention\n"
        )
