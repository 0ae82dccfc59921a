"""The per-task cap: exactly the newest entries survive, whoever writes and however."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.helpers import at, insert_rows, kept_ids, new_task


class TestOneWriter:
    """A single writer, through every kind of INSERT."""

    async def test_150_rows_in_one_insert_keep_the_newest_100(
        self, sql: asyncpg.Connection
    ) -> None:
        """One 150-row INSERT leaves the 100 rows with the latest created_at."""
        task = await new_task(sql)
        rows = [(task, at(i)) for i in range(150)]
        random.Random(1).shuffle(rows)  # arrival order must not matter when timestamps differ
        ids = await insert_rows(sql, rows)
        by_time = [i for _, i in sorted(zip((t for _, t in rows), ids, strict=True))]
        assert await kept_ids(sql, task) == by_time[50:]

    async def test_equal_timestamps_keep_the_last_inserted(self, sql: asyncpg.Connection) -> None:
        """105 single-row inserts with one timestamp keep the 100 that arrived last."""
        task = await new_task(sql)
        ids = [(await insert_rows(sql, [(task, at(0))]))[0] for _ in range(105)]
        assert await kept_ids(sql, task) == ids[5:]

    async def test_equal_timestamps_in_one_statement(self, sql: asyncpg.Connection) -> None:
        """105 rows with one timestamp in one INSERT keep the last 100 in statement order."""
        task = await new_task(sql)
        ids = await insert_rows(sql, [(task, at(0))] * 105)
        assert await kept_ids(sql, task) == ids[5:]

    async def test_10000_row_insert(self, sql: asyncpg.Connection) -> None:
        """A 10,000-row INSERT over 20 tasks leaves each with its newest 100."""
        tasks = [await new_task(sql) for _ in range(20)]
        rows = [(tasks[i % 20], at(i)) for i in range(10_000)]
        ids = await insert_rows(sql, rows)
        for n, task in enumerate(tasks):
            assert await kept_ids(sql, task) == ids[n::20][-100:]

    async def test_copy_is_trimmed_too(self, sql: asyncpg.Connection) -> None:
        """COPY fires the trim like INSERT does."""
        task = await new_task(sql)
        ids = [uuid.uuid4() for _ in range(130)]
        await sql.copy_records_to_table(
            "task_build_history",
            records=[(i, task, "chat_message", f"copy {n}", at(n)) for n, i in enumerate(ids)],
            columns=["id", "task_id", "context_type", "content", "created_at"],
        )
        assert await kept_ids(sql, task) == ids[30:]

    async def test_an_old_row_arriving_late_is_the_one_dropped(
        self, sql: asyncpg.Connection
    ) -> None:
        """A task at the cap that receives an entry older than all it holds drops that entry."""
        task = await new_task(sql)
        ids = await insert_rows(sql, [(task, at(100 + i)) for i in range(100)])
        await insert_rows(sql, [(task, at(0))])
        assert await kept_ids(sql, task) == ids

    async def test_one_tasks_trim_never_touches_another(self, sql: asyncpg.Connection) -> None:
        """Trimming task A leaves task B's rows alone, even older ones."""
        a, b = await new_task(sql), await new_task(sql)
        b_ids = await insert_rows(sql, [(b, at(i)) for i in range(10)])
        await insert_rows(sql, [(a, at(1000 + i)) for i in range(250)])
        assert await kept_ids(sql, b) == b_ids
        assert len(await kept_ids(sql, a)) == 100

    async def test_the_cap_is_a_database_setting(self, sql: asyncpg.Connection) -> None:
        """Lowering max_entries_per_task trims a task down on its next insert."""
        task = await new_task(sql)
        ids = await insert_rows(sql, [(task, at(i)) for i in range(50)])
        await sql.execute("UPDATE task_build_history_settings SET max_entries_per_task = 10")
        ids += await insert_rows(sql, [(task, at(100))])
        assert await kept_ids(sql, task) == ids[-10:]

    async def test_counting_restarts_after_a_delete(self, sql: asyncpg.Connection) -> None:
        """After rows are deleted, a task fills back up to exactly the cap."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, at(i)) for i in range(100)])
        await sql.execute(
            "DELETE FROM task_build_history WHERE id IN"
            " (SELECT id FROM task_build_history WHERE task_id = $1 LIMIT 40)",
            task,
        )
        newer = await insert_rows(sql, [(task, at(500 + i)) for i in range(60)])
        kept = await kept_ids(sql, task)
        assert len(kept) == 100
        assert kept[-60:] == newer

    async def test_truncate_resets_the_counts(self, sql: asyncpg.Connection) -> None:
        """After TRUNCATE, a task holds up to the cap again, not fewer."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, at(i)) for i in range(100)])
        await sql.execute("TRUNCATE task_build_history")
        assert len(await insert_rows(sql, [(task, at(i)) for i in range(100)])) == 100
        assert len(await kept_ids(sql, task)) == 100

    async def test_an_entry_cannot_move_to_another_task(self, sql: asyncpg.Connection) -> None:
        """Changing an entry's task_id is refused, since both tasks' counts would go wrong."""
        a, b = await new_task(sql), await new_task(sql)
        (entry,) = await insert_rows(sql, [(a, at(0))])
        with pytest.raises(asyncpg.CheckViolationError, match="cannot move to another task"):
            await sql.execute("UPDATE task_build_history SET task_id = $1 WHERE id = $2", b, entry)


class TestSettingsChanges:
    """A change of the limits applies when it commits, not at the next insert."""

    async def test_lowering_the_cap_trims_at_once(self, sql: asyncpg.Connection) -> None:
        """After the UPDATE of max_entries_per_task, every task is within the new cap."""
        a, b = await new_task(sql), await new_task(sql)
        a_ids = await insert_rows(sql, [(a, at(i)) for i in range(40)])
        b_ids = await insert_rows(sql, [(b, at(i)) for i in range(5)])
        await sql.execute("UPDATE task_build_history_settings SET max_entries_per_task = 10")
        assert await kept_ids(sql, a) == a_ids[-10:]
        assert await kept_ids(sql, b) == b_ids
        assert (
            await sql.fetchval(
                "SELECT entries FROM task_build_history_counts WHERE task_id = $1", a
            )
            == 10
        )

    async def test_raising_the_cap_keeps_everything(self, sql: asyncpg.Connection) -> None:
        """A higher cap deletes nothing and lets tasks grow to it."""
        task = await new_task(sql)
        await sql.execute("UPDATE task_build_history_settings SET max_entries_per_task = 150")
        await insert_rows(sql, [(task, at(i)) for i in range(200)])
        assert len(await kept_ids(sql, task)) == 150


class TestConcurrentWriters:
    """Many connections writing the same tasks at once."""

    async def test_16_connections_mixing_two_tasks(
        self, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """16 writers of 5-row batches that mix two tasks leave exactly the newest 100 each."""
        a, b = await new_task(sql), await new_task(sql)
        # Every row gets a distinct timestamp; batches go out in random order, and each batch
        # lists the two tasks in its own order, so the lock order differs from one to the next.
        stamps = [at(i / 1000) for i in range(16 * 25 * 5)]
        rng = random.Random(16)
        rng.shuffle(stamps)
        batches = [
            [(a if rng.random() < 0.5 else b, stamps[5 * n + k]) for k in range(5)]
            for n in range(16 * 25)
        ]
        written: dict[uuid.UUID, list[tuple[datetime, uuid.UUID]]] = {a: [], b: []}

        async def writer(mine: list[list[tuple[uuid.UUID, datetime]]]) -> None:
            connection = await asyncpg.connect(database_url)
            try:
                for batch in mine:
                    ids = await insert_rows(connection, batch)
                    for (task, stamp), entry in zip(batch, ids, strict=True):
                        written[task].append((stamp, entry))
            finally:
                await connection.close()

        await asyncio.gather(*(writer(batches[n::16]) for n in range(16)))

        for task in (a, b):
            newest = [entry for _, entry in sorted(written[task])[-100:]]
            assert await kept_ids(sql, task) == newest
        counts = await sql.fetch("SELECT task_id, entries FROM task_build_history_counts")
        assert {r["task_id"]: r["entries"] for r in counts} == {a: 100, b: 100}

    async def test_a_concurrent_update_of_an_oldest_row(
        self, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """A row updated while the trim waits for it still counts: the task ends at the cap."""
        task = await new_task(sql)
        ids = await insert_rows(sql, [(task, at(i)) for i in range(100)])
        updater = await asyncpg.connect(database_url)
        writer = await asyncpg.connect(database_url)
        try:
            transaction = updater.transaction()
            await transaction.start()
            # A new row version (and ctid) for the oldest row, not committed yet.
            await updater.execute(
                "UPDATE task_build_history SET metadata = '{\"redacted\": true}' WHERE id = $1",
                ids[0],
            )
            insert = asyncio.create_task(insert_rows(writer, [(task, at(500))]))
            await asyncio.sleep(0.5)  # the trim is now waiting for the updater's row lock
            assert not insert.done()
            await transaction.commit()
            await insert
        finally:
            await updater.close()
            await writer.close()
        kept = await kept_ids(sql, task)
        assert len(kept) == 100
        assert kept[:99] == ids[1:]


class TestConcurrentDeletes:
    """Deleting tasks, deleting histories and expiry, beside each other and beside writers."""

    async def test_task_deletes_race_expiry_and_history_deletes(
        self, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """DELETE FROM tasks, expiry and delete_task on the same tasks never deadlock."""
        old = datetime.now(UTC) - timedelta(days=30)
        tasks = [await new_task(sql) for _ in range(40)]
        for task in tasks:
            await insert_rows(sql, [(task, old + timedelta(seconds=i)) for i in range(30)])
            await insert_rows(sql, [(task, at(i)) for i in range(30)])

        async def session(work: list[str], args: list[list[object]]) -> None:
            connection = await asyncpg.connect(database_url)
            try:
                for statement, arguments in zip(work, args, strict=True):
                    await connection.execute(statement, *arguments)
            finally:
                await connection.close()

        shuffled = random.Random(3).sample(tasks, len(tasks))
        await asyncio.gather(
            session(["DELETE FROM tasks WHERE id = $1"] * 40, [[t] for t in tasks]),
            session(["DELETE FROM tasks WHERE id = $1"] * 40, [[t] for t in reversed(tasks)]),
            session(["SELECT task_build_history_expire_batch_v1(7)"] * 60, [[]] * 60),
            session(["SELECT task_build_history_delete_task_v1($1)"] * 40, [[t] for t in shuffled]),
        )
        assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 0
        assert await sql.fetchval("SELECT count(*) FROM task_build_history_counts") == 0
