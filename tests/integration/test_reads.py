"""The store's reads: look-ups, counts, deletes, and `task-history show`."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import asyncpg
import pytest

from consumer.cli import main
from consumer.entries import ContextType
from consumer.store import Store
from tests.helpers import at, insert_rows, kept_ids, new_task, on_database


class TestLookups:
    """Find by task, workspace and session."""

    async def test_find_by_task_oldest_first_ties_by_arrival(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """Entries come back oldest first; equal timestamps in arrival order."""
        task = await new_task(sql)
        late = await insert_rows(sql, [(task, at(10))])
        tied = await insert_rows(sql, [(task, at(5))] * 3)
        early = await insert_rows(sql, [(task, at(1))])
        entries = await store.find_by_task(task)
        assert [e.id for e in entries] == early + tied + late
        assert entries[0].context_type is ContextType.AGENT_TURN
        assert [e.id for e in await store.find_by_task(task, limit=2)] == early + tied[:1]

    async def test_find_by_workspace_and_session_span_tasks(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """A workspace or session look-up gathers entries of several tasks, oldest first."""
        a, b = await new_task(sql), await new_task(sql)
        workspace, session = uuid.uuid4(), uuid.uuid4()
        query = (
            "INSERT INTO task_build_history (task_id, workspace_id, session_id, context_type,"
            " content, metadata, created_at) VALUES ($1, $2, $3, 'chat_message', 'hi', $4, $5)"
            " RETURNING id"
        )
        second = await sql.fetchval(query, a, workspace, session, '{"n": 2}', at(2))
        first = await sql.fetchval(query, b, workspace, None, '{"n": 1}', at(1))
        await sql.fetchval(query, b, None, None, None, at(3))
        assert [e.id for e in await store.find_by_workspace(workspace)] == [first, second]
        found = await store.find_by_session(session)
        assert [e.id for e in found] == [second]
        assert found[0].metadata == {"n": 2}
        assert await store.find_by_session(uuid.uuid4()) == []


class TestCountsAndDeletes:
    """Counting, the oldest date, deleting a task's history, and cascades."""

    async def test_count_and_oldest(self, store: Store, sql: asyncpg.Connection) -> None:
        """count_by_task counts one task; oldest_entry_date finds its first entry."""
        a, b = await new_task(sql), await new_task(sql)
        await insert_rows(sql, [(a, at(3)), (a, at(2)), (b, at(1))])
        assert await store.count_by_task(a) == 2
        assert await store.count_by_task(uuid.uuid4()) == 0
        assert await store.oldest_entry_date(a) == at(2)
        assert await store.oldest_entry_date() == at(1)
        assert await store.oldest_entry_date(uuid.uuid4()) is None

    async def test_delete_by_task(self, store: Store, sql: asyncpg.Connection) -> None:
        """delete_by_task removes one task's entries, returns how many, and spares the rest."""
        a, b = await new_task(sql), await new_task(sql)
        await insert_rows(sql, [(a, at(i)) for i in range(4)])
        others = await insert_rows(sql, [(b, at(0))])
        assert await store.delete_by_task(a) == 4
        assert await kept_ids(sql, a) == []
        assert await kept_ids(sql, b) == others
        assert await store.delete_by_task(a) == 0

    async def test_deleting_a_task_cascades(self, store: Store, sql: asyncpg.Connection) -> None:
        """Deleting the task row deletes its history and its counter."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, at(i)) for i in range(5)])
        await sql.execute("DELETE FROM tasks WHERE id = $1", task)
        assert await store.count_by_task(task) == 0
        assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 0
        assert await sql.fetchval("SELECT count(*) FROM task_build_history_counts") == 0

    async def test_create_task_is_idempotent(self, store: Store, sql: asyncpg.Connection) -> None:
        """create_task makes the row once and ignores a second call."""
        task = uuid.uuid4()
        await store.create_task(task)
        await store.create_task(task)
        assert await sql.fetchval("SELECT count(*) FROM tasks WHERE id = $1", task) == 1

    async def test_limits(self, store: Store) -> None:
        """The database holds the two limits: 100 entries and 20 days."""
        assert await store.limits() == (100, timedelta(days=20))


class TestShowCommand:
    """`task-history show TASK_ID`."""

    @pytest.fixture
    def task(self, database_url: str) -> uuid.UUID:
        """A task with two entries, an agent turn and an error."""

        async def seed(connection: asyncpg.Connection) -> uuid.UUID:
            task = await new_task(connection)
            await connection.execute(
                "INSERT INTO task_build_history (task_id, context_type, content, metadata,"
                " created_at) VALUES ($1, 'agent_turn', 'planned the fix', '{\"step\": 1}', $2),"
                " ($1, 'error', 'tests failed', NULL, $3)",
                task,
                at(1),
                at(2),
            )
            return task

        return on_database(database_url, seed)

    def test_table(
        self, database_url: str, task: uuid.UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without flags, oldest first; not on a terminal, a plain line per entry, no box."""
        assert main(["--database-url", database_url, "show", str(task)]) == 0
        heading, *lines = capsys.readouterr().out.splitlines()
        assert heading == f"task {task}: 2 entries, oldest first"
        assert [line.split(None, 3)[2:] for line in lines] == [
            ["agent_turn", "planned the fix"],
            ["error", "tests failed"],
        ]
        assert not set("".join(lines)) & set("│┃─━┏┓┗┛┡┩└┘")

    def test_json_lines(
        self, database_url: str, task: uuid.UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json prints one object per line with the nine fields of an entry."""
        assert main(["--database-url", database_url, "show", str(task), "--json"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["content"] for line in lines] == ["planned the fix", "tests failed"]
        assert set(lines[0]) == {
            "id", "task_id", "workspace_id", "session_id", "context_type",
            "content", "metadata", "created_at", "expires_at",
        }  # fmt: skip
        assert lines[0]["metadata"] == {"step": 1}

    def test_json_array(
        self, database_url: str, task: uuid.UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json --array prints one JSON array."""
        assert main(["--database-url", database_url, "show", str(task), "--json", "--array"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2

    def test_unknown_task(self, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A task that doesn't exist says so, with how to create it, and exits 0."""
        task = uuid.uuid4()
        assert main(["--database-url", database_url, "show", str(task)]) == 0
        out = capsys.readouterr().out
        assert f"no task {task} exists" in out
        assert "TASK_HISTORY_CREATE_MISSING_TASKS=true" in out
