"""Migrations: applied once each, in order, safely from several replicas, edits refused."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from consumer import migrations
from consumer.cli import main
from consumer.errors import MigrationEditedError, NotMigratedError, StoreError
from consumer.store import Store

# What the code relies on: the contract's nine columns plus the arrival sequence.
EXPECTED_COLUMNS = {
    "id": ("uuid", "NO"),
    "task_id": ("uuid", "NO"),
    "workspace_id": ("uuid", "YES"),
    "session_id": ("uuid", "YES"),
    "context_type": ("text", "NO"),
    "content": ("text", "NO"),
    "metadata": ("jsonb", "YES"),
    "created_at": ("timestamp with time zone", "NO"),
    "expires_at": ("timestamp with time zone", "NO"),
    "seq": ("bigint", "NO"),
}
EXPECTED_INDEXES = {
    "task_build_history_pkey",
    "task_build_history_task_idx",
    "task_build_history_workspace_idx",
    "task_build_history_session_idx",
    "task_build_history_expires_idx",
}


async def schema_of(url: str) -> list[tuple[str, ...]]:
    """Tables, columns, indexes, constraints, functions and triggers, as one sorted list."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            """
            SELECT 'column', table_name, column_name, data_type, is_nullable, column_default
              FROM information_schema.columns WHERE table_schema = 'public'
            UNION ALL SELECT 'index', tablename, indexname, indexdef, '', ''
              FROM pg_indexes WHERE schemaname = 'public'
            UNION ALL SELECT 'constraint', conrelid::regclass::text, conname,
                   pg_get_constraintdef(oid), '', ''
              FROM pg_constraint WHERE connamespace = 'public'::regnamespace
            UNION ALL SELECT 'function', proname, md5(prosrc), '', '', ''
              FROM pg_proc WHERE pronamespace = 'public'::regnamespace
            UNION ALL SELECT 'trigger', tgrelid::regclass::text, tgname,
                   pg_get_triggerdef(oid), '', ''
              FROM pg_trigger WHERE NOT tgisinternal
            """
        )
        return sorted(tuple(str(v) for v in row.values()) for row in rows)
    finally:
        await connection.close()


class TestMigrate:
    """`Store.migrate` and `task-history migrate`."""

    async def test_migrating_twice_is_a_no_op(self, empty_database_url: str) -> None:
        """The second run applies nothing and leaves the schema as it was."""
        async with Store(empty_database_url) as store:
            assert await store.migrate() == [m.name for m in migrations.discover()]
            before = await schema_of(empty_database_url)
            assert await store.migrate() == []
        assert await schema_of(empty_database_url) == before

    async def test_three_replicas_at_once(self, empty_database_url: str) -> None:
        """Three concurrent migrations apply each file exactly once, without error."""
        stores = [Store(empty_database_url, max_connections=1) for _ in range(3)]
        for store in stores:
            await store.open()
        try:
            results = await asyncio.gather(*(store.migrate() for store in stores))
        finally:
            for store in stores:
                await store.close()
        names = [m.name for m in migrations.discover()]
        assert sorted(results, key=len) == [[], [], names]
        connection = await asyncpg.connect(empty_database_url)
        assert await connection.fetchval("SELECT count(*) FROM task_history_migrations") == len(
            names
        )
        await connection.close()

    async def test_schema_matches_what_the_code_expects(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """The migrated table has the expected columns and look-up indexes, and passes the check."""
        columns = await sql.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_name = 'task_build_history'"
        )
        assert {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in columns} == (
            EXPECTED_COLUMNS
        )
        indexes = await sql.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'task_build_history'"
        )
        assert {r["indexname"] for r in indexes} == EXPECTED_INDEXES
        await store.check_schema()

    async def test_every_added_column_has_a_default(self, sql: asyncpg.Connection) -> None:
        """An INSERT naming only the contract's columns works: `tasks (id)` and the history."""
        await sql.execute("INSERT INTO tasks (id) VALUES ('00000000-0000-0000-0000-00000000000a')")
        await sql.execute(
            "INSERT INTO task_build_history (id, task_id, workspace_id, session_id, context_type,"
            " content, metadata, created_at, expires_at) VALUES (gen_random_uuid(),"
            " '00000000-0000-0000-0000-00000000000a', NULL, NULL, 'status_change', 'done',"
            " NULL, now(), now() + interval '20 days')"
        )

    async def test_context_type_is_enforced_by_the_database(self, sql: asyncpg.Connection) -> None:
        """A context type outside the six is refused by a CHECK constraint."""
        await sql.execute("INSERT INTO tasks (id) VALUES ('00000000-0000-0000-0000-00000000000b')")
        with pytest.raises(asyncpg.CheckViolationError):
            await sql.execute(
                "INSERT INTO task_build_history (task_id, context_type, content)"
                " VALUES ('00000000-0000-0000-0000-00000000000b', 'gossip', 'x')"
            )

    async def test_unmigrated_database_is_reported(self, empty_database_url: str) -> None:
        """check_schema and reads on an empty database say to run migrate."""
        async with Store(empty_database_url) as store:
            with pytest.raises(NotMigratedError, match="task-history migrate"):
                await store.check_schema()
            with pytest.raises(NotMigratedError, match="task-history migrate"):
                await store.count_by_task(uuid.uuid4())

    async def test_the_error_line_names_the_database(
        self, empty_database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A command on an empty database says which one to migrate, and no HINT from the server."""
        database = empty_database_url.rsplit("/", 1)[1]
        code = await asyncio.to_thread(
            main, ["show", "--database-url", empty_database_url, str(uuid.uuid4())]
        )
        assert code == 1
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith("task-history: error: the database is not migrated (relation ")
        assert f"run `task-history migrate` [database '{database}' on " in line
        assert "HINT" not in line

    async def test_an_edited_migration_is_refused(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """If an applied file's checksum no longer matches, migrate refuses to run."""
        await sql.execute("UPDATE task_history_migrations SET checksum = 'edited'")
        with pytest.raises(MigrationEditedError, match=r"0001_history\.sql"):
            await store.migrate()
        with pytest.raises(MigrationEditedError):
            await store.check_schema()

    async def test_uses_the_host_applications_tasks_table(self, empty_database_url: str) -> None:
        """An existing `tasks` table with a uuid id is used as it is."""
        connection = await asyncpg.connect(empty_database_url)
        await connection.execute(
            "CREATE TABLE tasks (id uuid PRIMARY KEY, title text NOT NULL DEFAULT 'untitled')"
        )
        await connection.close()
        async with Store(empty_database_url) as store:
            assert await store.migrate()
            await store.check_schema()

    async def test_refuses_a_tasks_table_without_uuid_id(self, empty_database_url: str) -> None:
        """An existing `tasks` table keyed by an integer stops migrate with a clear message."""
        connection = await asyncpg.connect(empty_database_url)
        await connection.execute("CREATE TABLE tasks (id bigint PRIMARY KEY)")
        await connection.close()
        async with Store(empty_database_url) as store:
            with pytest.raises(
                StoreError, match=r'0001_history\.sql failed: .*"tasks" has no uuid'
            ):
                await store.migrate()
            with pytest.raises(NotMigratedError):
                await store.check_schema()


class TestMigrateCommand:
    """`task-history migrate` from the command line."""

    def test_reports_what_it_applied(
        self, empty_database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The first run lists the files it applied, the second says all is up to date."""
        arguments = ["--database-url", empty_database_url, "migrate", "--skip-broker"]
        assert main(arguments) == 0
        assert capsys.readouterr().out.splitlines() == [
            f"applied {m.name}" for m in migrations.discover()
        ]
        assert main(arguments) == 0
        assert capsys.readouterr().out == "database is up to date\n"
