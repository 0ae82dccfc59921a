"""Paged and filtered reads: keyset pages, filters, and `task-history show`'s new flags."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from consumer.cli import main
from consumer.entries import ContextType
from consumer.pages import Cursor, HistoryQuery
from consumer.store import Store
from tests.helpers import at, insert_rows, new_task, on_database


async def insert_typed(
    sql: asyncpg.Connection,
    task: uuid.UUID,
    rows: list[tuple[str, datetime]],
    *,
    workspace: uuid.UUID | None = None,
    session: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Insert (context_type, created_at) rows for a task in one statement; their ids in order."""
    ids = [uuid.uuid4() for _ in rows]
    await sql.execute(
        """
        INSERT INTO task_build_history
            (id, task_id, workspace_id, session_id, context_type, content, created_at)
        SELECT id, $2, $3, $4, context_type, context_type || ' ' || n, created_at
        FROM unnest($1::uuid[], $5::text[], $6::timestamptz[]) WITH ORDINALITY
            AS r (id, context_type, created_at, n)
        ORDER BY n
        """,
        ids,
        task,
        workspace,
        session,
        [context_type for context_type, _ in rows],
        [created for _, created in rows],
    )
    return ids


async def read_all_pages(store: Store, query: HistoryQuery) -> list[list[uuid.UUID]]:
    """Follow the cursors from the first page to the last; the ids of each page."""
    pages = []
    while True:
        page = await store.find_page(query)
        pages.append([entry.id for entry in page.entries])
        if page.next is None:
            return pages
        query = HistoryQuery(
            task_id=query.task_id,
            limit=query.limit,
            after=page.next,
            newest_first=query.newest_first,
        )


class TestKeysetPages:
    """Pages follow (created_at, seq) order and resume exactly where the last one ended."""

    async def test_every_row_once_in_order_while_rows_arrive(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """Rows inserted between pages (later in time) are visited too; none twice, none lost."""
        task = await new_task(sql)
        # Ties on created_at across page boundaries: only seq tells these apart.
        expected = await insert_rows(sql, [(task, at(n // 3)) for n in range(40)])
        query = HistoryQuery(task_id=task, limit=7)
        seen: list[uuid.UUID] = []
        pages = 0
        while True:
            page = await store.find_page(query)
            seen.extend(entry.id for entry in page.entries)
            pages += 1
            if pages <= 3:  # new rows arrive between the first pages, newer than all others
                expected += await insert_rows(sql, [(task, at(1000 + pages))] * 2)
            if page.next is None:
                break
            query = HistoryQuery(task_id=task, limit=7, after=page.next)
        assert seen == expected
        assert len(seen) == len(set(seen)) == 46
        assert pages == 7

    async def test_newest_first_pages(self, store: Store, sql: asyncpg.Connection) -> None:
        """With newest_first, pages walk backwards, ties in reverse arrival order."""
        task = await new_task(sql)
        ids = await insert_rows(sql, [(task, at(n // 2)) for n in range(9)])
        pages = await read_all_pages(store, HistoryQuery(task_id=task, limit=4, newest_first=True))
        assert pages == [ids[::-1][0:4], ids[::-1][4:8], ids[::-1][8:]]

    async def test_last_page_has_no_cursor(self, store: Store, sql: asyncpg.Connection) -> None:
        """A page that reaches the end gives no cursor, even when exactly full."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, at(n)) for n in range(4)])
        assert (await store.find_page(HistoryQuery(task_id=task, limit=4))).next is None
        assert (await store.find_page(HistoryQuery(task_id=task, limit=3))).next is not None

    async def test_expired_rows_never_appear(self, store: Store, sql: asyncpg.Connection) -> None:
        """Pages and streams skip expired rows even though the expiry job has not run."""
        task = await new_task(sql)
        old = datetime.now(UTC) - timedelta(days=30)
        await insert_rows(sql, [(task, old), (task, old)])
        kept = await insert_rows(sql, [(task, at(1))])
        page = await store.find_page(HistoryQuery(task_id=task, limit=10))
        assert [entry.id for entry in page.entries] == kept
        assert [entry.id async for entry in store.stream(HistoryQuery(task_id=task))] == kept


class TestFilters:
    """Context types, time range, workspace and session; they combine."""

    async def test_context_types_repeatable(self, store: Store, sql: asyncpg.Connection) -> None:
        """Only the given context types come back."""
        task = await new_task(sql)
        ids = await insert_typed(
            sql, task, [("error", at(1)), ("agent_turn", at(2)), ("status_change", at(3))]
        )
        query = HistoryQuery(
            task_id=task, context_types=(ContextType.ERROR, ContextType.STATUS_CHANGE)
        )
        assert [e.id for e in (await store.find_page(query)).entries] == [ids[0], ids[2]]

    async def test_time_range_since_inclusive_until_exclusive(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """The range includes `since` and excludes `until`."""
        task = await new_task(sql)
        ids = await insert_rows(sql, [(task, at(n)) for n in range(5)])
        query = HistoryQuery(task_id=task, since=at(1), until=at(3))
        assert [e.id for e in (await store.find_page(query)).entries] == ids[1:3]

    async def test_workspace_and_session_across_tasks(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """A workspace read spans tasks; adding a session and a type narrows it."""
        a, b = await new_task(sql), await new_task(sql)
        workspace, session = uuid.uuid4(), uuid.uuid4()
        first = await insert_typed(sql, a, [("error", at(1))], workspace=workspace)
        second = await insert_typed(
            sql, b, [("error", at(2)), ("agent_turn", at(3))], workspace=workspace, session=session
        )
        await insert_typed(sql, b, [("error", at(4))])
        everything = await store.find_page(HistoryQuery(workspace_id=workspace))
        assert [e.id for e in everything.entries] == first + second
        narrowed = HistoryQuery(
            workspace_id=workspace, session_id=session, context_types=(ContextType.ERROR,)
        )
        assert [e.id for e in (await store.find_page(narrowed)).entries] == second[:1]


class TestShowFlags:
    """`task-history show` with pages and filters."""

    @pytest.fixture
    def task(self, database_url: str) -> uuid.UUID:
        """A task with five entries: error, agent_turn, error, agent_turn, error."""

        async def seed(connection: asyncpg.Connection) -> uuid.UUID:
            task = await new_task(connection)
            kinds = [("error" if n % 2 == 0 else "agent_turn", at(n)) for n in range(5)]
            await insert_typed(connection, task, kinds)
            return task

        return on_database(database_url, seed)

    def test_json_pages_put_the_cursor_on_stderr(
        self, database_url: str, task: uuid.UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With --json, entries go to stdout, the next cursor to stderr; --after resumes."""
        base = ["--database-url", database_url, "show", str(task), "--json", "--limit", "3"]
        assert main(base) == 0
        first = capsys.readouterr()
        assert [json.loads(line)["content"] for line in first.out.splitlines()] == [
            "error 1",
            "agent_turn 2",
            "error 3",
        ]
        cursor = first.err.strip().removeprefix("next page: --after ")
        assert main([*base, "--after", cursor]) == 0
        second = capsys.readouterr()
        assert [json.loads(line)["content"] for line in second.out.splitlines()] == [
            "agent_turn 4",
            "error 5",
        ]
        assert second.err == ""

    def test_table_filters_and_order(
        self, database_url: str, task: uuid.UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--type and --newest-first shape the table; the cursor is its last line."""
        argv = ["--database-url", database_url, "show", str(task), "--type", "error"]
        assert main([*argv, "--newest-first", "--limit", "2"]) == 0
        out = capsys.readouterr().out
        assert f"task {task}: 2 entries, newest first" in out
        assert out.index("error 5") < out.index("error 3")
        assert "agent_turn" not in out
        assert out.splitlines()[-1].startswith("next page: --after ")

    def test_since_and_until(
        self, database_url: str, task: uuid.UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--since and --until take RFC 3339 times."""
        argv = ["--database-url", database_url, "show", str(task), "--json"]
        assert main([*argv, "--since", at(1).isoformat(), "--until", at(3).isoformat()]) == 0
        contents = [json.loads(line)["content"] for line in capsys.readouterr().out.splitlines()]
        assert contents == ["agent_turn 2", "error 3"]

    def test_by_session_without_a_task(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--session alone shows that session's entries, whatever their task."""

        async def seed(connection: asyncpg.Connection) -> uuid.UUID:
            session = uuid.uuid4()
            for content in ("first", "second"):
                task = await new_task(connection)
                await connection.execute(
                    "INSERT INTO task_build_history (task_id, session_id, context_type, content)"
                    " VALUES ($1, $2, 'chat_message', $3)",
                    task,
                    session,
                    content,
                )
            return session

        session = on_database(database_url, seed)
        assert main(["--database-url", database_url, "show", "--session", str(session)]) == 0
        out = capsys.readouterr().out
        assert f"session {session}: 2 entries, oldest first" in out
        assert out.index("first") < out.index("second")

    @pytest.mark.parametrize(
        "flags",
        [
            ["--after", "not-a-cursor"],
            ["--after", Cursor(at(1), 5, newest_first=True).encode()],
            ["--since", "yesterday"],
            ["--since", at(5).isoformat(), "--until", at(1).isoformat()],
            ["--type", "gossip"],
        ],
    )
    def test_bad_flags(
        self,
        database_url: str,
        task: uuid.UUID,
        flags: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A bad cursor, time, range or type is one line and exit 2."""
        assert main(["--database-url", database_url, "show", str(task), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("task-history: error: ")
        assert len(err.splitlines()) == 1
