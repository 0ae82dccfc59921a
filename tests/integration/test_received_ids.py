"""Exactly once, whatever the cap did: a redelivered event is never stored a second time."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from consumer.entries import NewEntry
from consumer.store import Store
from tests.helpers import at, insert_rows, kept_ids, new_task
from tests.letters import letter, rows


def entry(task: uuid.UUID, created_at: datetime, *, id: uuid.UUID | None = None) -> NewEntry:  # noqa: A002  # the entry's own field name
    """A row as the consumer writes it."""
    return NewEntry(
        id or uuid.uuid4(), task, None, None, "agent_turn", "redelivered?", None, created_at
    )


async def received(sql: asyncpg.Connection, task: uuid.UUID) -> int:
    """How many entries the task was given, the ones the cap removed included."""
    return int(
        await sql.fetchval(
            "SELECT received FROM task_build_history_counts WHERE task_id = $1", task
        )
    )


class TestAfterTheCapTrimmedIt:
    """The first copy is gone, trimmed by the cap; the copy redelivered later is turned away."""

    async def test_with_its_created_at(self, sql: asyncpg.Connection, database_url: str) -> None:
        """The same row again: not stored, not counted, not notified."""
        task = await new_task(sql)
        first = entry(task, at(0))
        async with Store(database_url) as store:
            assert await store.write_batch([first], []) == {first.id}
            await insert_rows(sql, [(task, at(1 + n)) for n in range(100)])
            assert first.id not in await kept_ids(sql, task)
            before = await received(sql, task)
            notified: list[str] = []
            await sql.add_listener("task_build_history", lambda *args: notified.append(args[3]))
            assert await store.write_batch([first], []) == set()
            await asyncio.sleep(0.2)  # a notification would have arrived by now
        assert first.id not in await kept_ids(sql, task)
        assert await received(sql, task) == before
        assert notified == []

    async def test_stamped_with_a_later_arrival(
        self, sql: asyncpg.Connection, database_url: str
    ) -> None:
        """A copy that carries no created_at is stamped anew: it must not push out a real entry."""
        task = await new_task(sql)
        first = entry(task, at(0))
        async with Store(database_url) as store:
            await store.write_batch([first], [])
            newer = await insert_rows(sql, [(task, at(1 + n)) for n in range(100)])
            late = first._replace(created_at=datetime.now(UTC))
            assert await store.write_batch([late], []) == set()
        assert await kept_ids(sql, task) == newer

    async def test_within_a_batch_of_new_ones(
        self, sql: asyncpg.Connection, database_url: str
    ) -> None:
        """Mixed with new entries, only the new ones are stored, in their order."""
        task = await new_task(sql)
        old = entry(task, at(0))
        async with Store(database_url) as store:
            await store.write_batch([old], [])
            await insert_rows(sql, [(task, at(1 + n)) for n in range(100)])
            batch = [entry(task, at(200)), old, entry(task, at(201))]
            assert await store.write_batch(batch, []) == {batch[0].id, batch[2].id}
        kept = await kept_ids(sql, task)
        assert kept[-2:] == [batch[0].id, batch[2].id]
        assert old.id not in kept


class TestAtOnce:
    """Two consumers writing the same delivery at the same moment store it once."""

    async def test_two_writers_one_row(self, sql: asyncpg.Connection, database_url: str) -> None:
        """20 rounds of two concurrent writes of one batch: each id is stored exactly once."""
        task = await new_task(sql)
        async with Store(database_url) as one, Store(database_url) as other:
            for _ in range(20):
                batch = [entry(task, at(n)) for n in range(5)]
                stored = await asyncio.gather(
                    one.write_batch(batch, []), other.write_batch(batch, [])
                )
                assert stored[0] | stored[1] == {row.id for row in batch}
                assert not stored[0] & stored[1]
        count = await sql.fetchval("SELECT received FROM task_build_history_counts")
        assert count == 100


class TestTheWindow:
    """Received ids are kept for the redelivery window, then forgotten by expiry."""

    async def test_forgotten_after_the_window(
        self, sql: asyncpg.Connection, database_url: str
    ) -> None:
        """Ids older than the window go; newer ones stay; `expire` counts only entries."""
        task = await new_task(sql)
        async with Store(database_url) as store:
            rows = [entry(task, at(n)) for n in range(3)]
            await store.write_batch(rows, [])
            await sql.execute(
                "UPDATE task_build_history_received SET received_at = now() - interval '2 days'"
                " WHERE id = $1",
                rows[0].id,
            )
            assert await store.forget_received() == 1
            left = await sql.fetch("SELECT id FROM task_build_history_received")
            assert {record["id"] for record in left} == {rows[1].id, rows[2].id}
            await sql.execute("UPDATE task_build_history_settings SET redelivery_window = '1s'")
            await sql.execute(
                "UPDATE task_build_history_received SET received_at = now() - interval '1 minute'"
            )
            assert await store.expire() == (0, 0)
        assert await sql.fetchval("SELECT count(*) FROM task_build_history_received") == 0

    async def test_the_window_is_a_database_setting(self, sql: asyncpg.Connection) -> None:
        """One day by default; it must be positive."""
        window = await sql.fetchval("SELECT redelivery_window FROM task_build_history_settings")
        assert window == timedelta(days=1)
        with pytest.raises(asyncpg.CheckViolationError):
            await sql.execute("UPDATE task_build_history_settings SET redelivery_window = '0s'")


class TestDeadLettersOnce:
    """A message dead-lettered again (delivered twice) is one row; a replay's failure is another."""

    async def test_the_same_message_twice(self, sql: asyncpg.Connection, database_url: str) -> None:
        """Two deliveries of one message, even with other failures: one row, the first."""
        first = letter(1, code="invalid_json")
        again = replace(first, code="internal_error", detail="failed another way")
        async with Store(database_url) as store:
            await store.write_batch([], [first])
            await store.write_batch([], [again, letter(2)])
        assert await rows(sql) == ["m1", "m2"]
        assert await sql.fetchval("SELECT error FROM task_build_history_dead_letters") == (
            "invalid_json"
        )

    async def test_a_replayed_copy_failing_again(
        self, sql: asyncpg.Connection, database_url: str
    ) -> None:
        """The copy `dlq replay` sends counts one more replay: its failure is a row of its own."""
        first = letter(1)
        async with Store(database_url) as store:
            await store.write_batch([], [first])
            await store.write_batch([], [replace(first, replay_count=1)])
        assert await rows(sql) == ["m1", "m1"]
