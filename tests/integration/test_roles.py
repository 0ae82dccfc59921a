"""Least privilege: the consumer runs as a member of task_history_consumer, and can do no more."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import structlog

from consumer import operations
from consumer.deadletters import Selection
from consumer.settings import Settings
from consumer.store import Store
from consumer.topology import Topology
from tests.cluster import free_port
from tests.harness import Bus, command_running, event, run_command, running, wait_for
from tests.helpers import admin, insert_rows, new_task
from tests.letters import bury, letter


def as_role(url: str, role: str) -> str:
    """`url` logging in as `role` (no password: the test server trusts local connections)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


async def login_role(database_url: str, group: str | None) -> AsyncIterator[str]:
    """A LOGIN role of this test's own, a member of `group`; yields its URL; dropped after."""
    role = f"th_login_{uuid.uuid4().hex[:12]}"
    member = f" IN ROLE {group}" if group else ""
    await admin(database_url, f"CREATE ROLE {role} LOGIN{member}")
    try:
        yield as_role(database_url, role)
    finally:
        await admin(
            database_url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            f"DROP ROLE IF EXISTS {role}",
        )


@pytest.fixture
async def consumer_url(database_url: str) -> AsyncIterator[str]:
    """The test's database, as a login role that is a member of task_history_consumer."""
    async for url in login_role(database_url, "task_history_consumer"):
        yield url


@pytest.fixture
async def reader_url(database_url: str) -> AsyncIterator[str]:
    """The test's database, as a login role that is a member of task_history_reader."""
    async for url in login_role(database_url, "task_history_reader"):
        yield url


@pytest.fixture
async def nobody_url(database_url: str) -> AsyncIterator[str]:
    """The test's database, as a login role with no grants but PUBLIC's."""
    async for url in login_role(database_url, None):
        yield url


class TestConsumerRoleIsEnough:
    """A member of task_history_consumer can run the consumer and expiry."""

    async def test_consume_cap_missing_tasks_and_expiry(
        self,
        settings: Settings,
        amqp_url: str,
        topology: Topology,
        sql: asyncpg.Connection,
        consumer_url: str,
    ) -> None:
        """Events are stored and capped, missing tasks created, expired entries deleted."""
        settings = settings.model_copy(
            update={"database_url": consumer_url, "create_missing_tasks": True}
        )
        task, unknown = await new_task(sql), uuid.uuid4()
        async with Bus(amqp_url, topology) as bus, running(settings):
            await bus.publish_many(event(task, f"event {n}") for n in range(105))
            await bus.publish(event(unknown, "first of a new task"))
            await bus.publish(event(task, "last"))
            await wait_for(
                lambda: sql.fetchval(
                    "SELECT count(*) FROM task_build_history WHERE content = 'last'"
                ),
                lambda n: n == 1,
                what="the last event stored",
            )
        assert (
            await sql.fetchval("SELECT count(*) FROM task_build_history WHERE task_id = $1", task)
            == 100
        )
        assert (
            await sql.fetchval(
                "SELECT count(*) FROM task_build_history WHERE task_id = $1", unknown
            )
            == 1
        )
        assert (
            await sql.fetchval(
                "SELECT entries FROM task_build_history_counts WHERE task_id = $1", task
            )
            == 100
        )

        long_ago = datetime.now(UTC) - timedelta(days=30)
        old_task = await new_task(sql)  # not `task`: at the cap, the trim would take them first
        await insert_rows(sql, [(old_task, long_ago + timedelta(seconds=n)) for n in range(3)])
        async with Store(consumer_url, max_connections=1) as store:
            assert await store.expire() == (3, 0)
            assert await store.delete_by_task(unknown) == 1
            assert len(await store.find_by_task(task)) == 100

    async def test_reader_reads_and_writes_nothing(
        self, sql: asyncpg.Connection, reader_url: str
    ) -> None:
        """A member of task_history_reader reads history and can't insert or expire."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, datetime.now(UTC))])
        async with Store(reader_url, max_connections=1) as store:
            assert len(await store.find_by_task(task)) == 1
        connection = await asyncpg.connect(reader_url)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(
                    "INSERT INTO task_build_history (task_id, context_type, content)"
                    " VALUES ($1, 'error', 'x')",
                    task,
                )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute("SELECT task_build_history_expire_batch_v1(10)")
        finally:
            await connection.close()


def reader_environment(url: str) -> dict[str, str]:
    """This process's environment, TASK_HISTORY_* variables left out, reading the database `url`."""
    plain = {k: v for k, v in os.environ.items() if not k.startswith("TASK_HISTORY_")}
    return plain | {"TASK_HISTORY_DATABASE_URL": url}


async def tail_until_waiting(task: uuid.UUID, url: str) -> tuple[int, str]:
    """`tail TASK` as the role of `url`, stopped by SIGINT once it waits; (exit code, stderr)."""
    async with command_running("tail", str(task), environment=reader_environment(url)) as process:
        assert process.stderr is not None
        lines: list[str] = []
        while not lines or (lines[-1] and not lines[-1].startswith("waiting for entries")):
            # Generous: a bound for a loaded machine, not the expected delay.
            lines.append((await asyncio.wait_for(process.stderr.readline(), 60)).decode())
        if lines[-1]:  # waiting; else it ended on its own, and communicate says how
            process.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, "".join(lines) + rest.decode()


class TestReaderRoleIsEnough:
    """A member of task_history_reader runs `show` and `tail`, of a task with no history too."""

    async def test_show_of_a_task_with_no_history(
        self, sql: asyncpg.Connection, reader_url: str
    ) -> None:
        """An existing task with no entries has no history; a missing one gets the hint."""
        task, missing = await new_task(sql), uuid.uuid4()
        code, out, err = await run_command(
            "show", str(task), environment=reader_environment(reader_url)
        )
        assert code == 0, err
        assert out == f"task {task} has no history\n"
        code, out, err = await run_command(
            "show", str(missing), environment=reader_environment(reader_url)
        )
        assert code == 0, err
        assert f"no task {missing} exists" in out
        assert "TASK_HISTORY_CREATE_MISSING_TASKS=true" in out

    async def test_tail_waits(self, sql: asyncpg.Connection, reader_url: str) -> None:
        """`tail` of an existing task waits; of a missing one says so first, then waits; exit 0."""
        task, missing = await new_task(sql), uuid.uuid4()
        code, err = await tail_until_waiting(task, reader_url)
        assert code == 0, err
        assert err == f"waiting for entries of task {task} (Ctrl-C to stop)\n"
        code, err = await tail_until_waiting(missing, reader_url)
        assert code == 0, err
        hint, waiting = err.splitlines()
        assert hint.startswith(f"no task {missing} exists: ")
        assert waiting == f"waiting for entries of task {missing} (Ctrl-C to stop)"

    async def test_tasks_refused_then_no_hint(
        self, sql: asyncpg.Connection, reader_url: str
    ) -> None:
        """A reader granted no read of `tasks` still runs `show` and `tail`, without the hint."""
        await sql.execute("REVOKE SELECT (id) ON tasks FROM task_history_reader")
        task = uuid.uuid4()
        code, out, err = await run_command(
            "show", str(task), environment=reader_environment(reader_url)
        )
        assert code == 0, err
        assert out == f"task {task} has no history\n"
        code, err = await tail_until_waiting(task, reader_url)
        assert code == 0, err
        assert err == f"waiting for entries of task {task} (Ctrl-C to stop)\n"


FORBIDDEN = [
    "DROP TABLE task_build_history",
    "TRUNCATE task_build_history",
    "ALTER TABLE task_build_history ADD COLUMN x int",
    "CREATE TABLE sneaky (x int)",
    "CREATE INDEX sneaky ON task_build_history (content)",
    "UPDATE task_build_history SET content = 'changed'",
    "UPDATE task_build_history_settings SET max_entries_per_task = 1",
    "INSERT INTO task_build_history_counts VALUES (gen_random_uuid(), 0)",
    "SELECT * FROM task_build_history_counts",
    "DELETE FROM tasks",
    "UPDATE tasks SET id = id",
    "DROP FUNCTION task_build_history_expire_batch_v1(integer)",
    "CALL task_build_history_expire_v1(10)",
    "CALL task_build_history_expire_v2(10)",
    "UPDATE task_build_history_dead_letters SET error = 'x'",
    "UPDATE task_build_history_dead_letter_totals SET singleton = false",
    "UPDATE task_build_history_secrets SET header_key = header_key",
]


class TestConsumerRoleIsNoMore:
    """A member of task_history_consumer can't change the schema or bypass the cap."""

    @pytest.mark.parametrize("statement", FORBIDDEN)
    async def test_refused(self, consumer_url: str, statement: str) -> None:
        """Each statement fails with permission denied (or must be owner)."""
        connection = await asyncpg.connect(consumer_url)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
        finally:
            await connection.close()

    async def test_public_cannot_run_the_owner_functions(
        self, sql: asyncpg.Connection, nobody_url: str
    ) -> None:
        """A role with no grant can't call the functions that run with their owner's rights."""
        task = await new_task(sql)
        connection = await asyncpg.connect(nobody_url)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute("SELECT task_build_history_delete_task_v1($1)", task)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute("SELECT task_build_history_expire_batch_v1(10)")
        finally:
            await connection.close()


class TestTheHeaderKey:
    """Only the consumer's role reads the key its headers are signed with."""

    async def test_the_consumer_reads_it_the_reader_does_not(
        self, consumer_url: str, reader_url: str, nobody_url: str
    ) -> None:
        """32 random bytes for the consumer; permission denied for the reader and PUBLIC."""
        connection = await asyncpg.connect(consumer_url)
        try:
            key = await connection.fetchval("SELECT header_key FROM task_build_history_secrets")
        finally:
            await connection.close()
        assert len(key) == 32
        for url in (reader_url, nobody_url):
            other = await asyncpg.connect(url)
            try:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await other.fetchval("SELECT header_key FROM task_build_history_secrets")
            finally:
                await other.close()

    async def test_each_deployment_has_its_own(
        self, sql: asyncpg.Connection, empty_database_url: str
    ) -> None:
        """Two databases migrated apart never share a key."""
        async with Store(empty_database_url, max_connections=1) as store:
            await store.migrate()
            other = await store.header_key()
        mine = await sql.fetchval("SELECT header_key FROM task_build_history_secrets")
        assert len(other) == len(mine) == 32
        assert other != mine


class TestRefusedWrites:
    """A grant revoked under a running consumer is waited out: not ready, no dead letter."""

    async def test_a_revoked_insert_is_waited_out(
        self,
        settings: Settings,
        amqp_url: str,
        topology: Topology,
        sql: asyncpg.Connection,
        consumer_url: str,
    ) -> None:
        """/readyz names the refusal, the gauge is 1, one log line; granted again, all stored."""
        port = free_port()
        role = settings.model_copy(
            update={
                "database_url": consumer_url,
                "metrics_host": "127.0.0.1",
                "metrics_port": port,
                "retry_backoff_max_seconds": 0.5,
            }
        )
        task = await new_task(sql)
        await sql.execute("REVOKE INSERT ON task_build_history FROM task_history_consumer")
        try:
            with structlog.testing.capture_logs() as logs:
                async with Bus(amqp_url, topology) as bus, running(role):
                    await bus.publish_many(event(task, f"held {n}") for n in range(20))
                    status, text = await wait_for(
                        lambda: _get(port, "/readyz"),
                        lambda answer: answer[0] == 503 and "refuses the writes" in answer[1],
                        what="/readyz to name the refusal",
                    )
                    assert "permission denied for table task_build_history" in text
                    _, metrics = await _get(port, "/metrics")
                    assert "task_history_database_refusing 1.0" in metrics
                    await asyncio.sleep(2)  # several more attempts, no more lines
                    await sql.execute("GRANT INSERT ON task_build_history TO task_history_consumer")
                    await wait_for(
                        lambda: sql.fetchval("SELECT count(*) FROM task_build_history"),
                        lambda n: n == 20,
                    )
                    await wait_for(lambda: _get(port, "/readyz"), lambda answer: answer[0] == 200)
        finally:
            await sql.execute("GRANT INSERT ON task_build_history TO task_history_consumer")
        assert status == 503
        refusals = [line for line in logs if line["event"].startswith("the database refuses")]
        assert len(refusals) == 1
        assert [line["event"] for line in logs if "accepts the writes" in line["event"]] == [
            "the database accepts the writes again"
        ]
        assert await sql.fetchval("SELECT count(*) FROM task_build_history_dead_letters") == 0


async def _get(port: int, path: str) -> tuple[int, str]:
    """(status, text) of GET `path` on the consumer's health server."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


class TestMigrationAcrossDatabases:
    """The roles are the cluster's; the grants are made in every migrated database."""

    async def test_migrating_again_elsewhere_keeps_the_roles(self, empty_database_url: str) -> None:
        """Migrating a second database while the roles exist grants there too, without error."""
        async with Store(empty_database_url, max_connections=1) as store:
            assert "0003_operations.sql" in await store.migrate()
        connection = await asyncpg.connect(empty_database_url)
        try:
            granted = await connection.fetchval(
                "SELECT has_table_privilege('task_history_consumer', 'task_build_history',"
                " 'INSERT')"
            )
        finally:
            await connection.close()
        assert granted is True


@pytest.fixture
async def operator_url(database_url: str) -> AsyncIterator[str]:
    """The test's database, as a login role that is a member of task_history_operator."""
    async for url in login_role(database_url, "task_history_operator"):
        yield url


OPERATOR_FORBIDDEN = [
    (
        "INSERT INTO task_build_history (task_id, context_type, content)"
        " VALUES (gen_random_uuid(), 'error', 'x')"
    ),
    "DELETE FROM task_build_history",
    "UPDATE task_build_history SET content = 'changed'",
    "DELETE FROM tasks",
    "CREATE TABLE sneaky (x int)",
    "UPDATE task_build_history_dead_letters SET error = 'x'",
    "INSERT INTO task_build_history_dead_letters (error, body) VALUES ('x', '')",
    "UPDATE task_build_history_dead_letter_actions SET actor = 'someone else'",
    "UPDATE task_build_history_dead_letter_actions SET database_role = 'someone else'",
    "DELETE FROM task_build_history_dead_letter_actions",
    "TRUNCATE task_build_history_dead_letter_actions",
    "UPDATE task_build_history_counts SET errors = 0",
    "SELECT task_build_history_expire_batch_v1(10)",
]


class TestOperatorRole:
    """task_history_operator replays, purges and records them; it can do nothing else."""

    async def test_purge_and_record_as_the_operator(
        self, database_url: str, operator_url: str
    ) -> None:
        """A purge run as the role deletes and is recorded, under its own login's name."""
        await bury(database_url, [letter(n) for n in range(4)])
        async with Store(operator_url, max_connections=2) as store:
            assert await store.may_operate()
            action, outcome = await operations.purge_recorded(
                store,
                selection=Selection(text="m1"),
                operator=operations.Operator(name="alice", via="http"),
            )
            assert outcome.done.count == 1
            recorded = await store.action(action.id)
            assert recorded is not None
            assert (recorded.affected, recorded.state) == (1, "finished")
            assert recorded.database_role == urlsplit(operator_url).username
            page = await store.recent_tasks()  # it reads what the reader reads
            assert page.tasks == []

    @pytest.mark.parametrize("statement", OPERATOR_FORBIDDEN)
    async def test_refused(self, operator_url: str, statement: str) -> None:
        """Each statement fails with permission denied (or must be owner)."""
        connection = await asyncpg.connect(operator_url)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
        finally:
            await connection.close()

    async def test_the_reader_may_not_operate(self, database_url: str, reader_url: str) -> None:
        """The reader reads the record and the recent tasks; it may not delete or record."""
        await bury(database_url, [letter(1)])
        async with Store(reader_url, max_connections=1) as store:
            assert not await store.may_operate()
            assert (await store.actions()).actions == []
            assert (await store.recent_tasks()).tasks == []
        connection = await asyncpg.connect(reader_url)
        try:
            for statement in (
                "DELETE FROM task_build_history_dead_letters",
                (
                    "INSERT INTO task_build_history_dead_letter_actions (action, actor, via)"
                    " VALUES ('purge', 'x', 'http')"
                ),
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await connection.execute(statement)
        finally:
            await connection.close()

    async def test_serve_refuses_an_operator_login_that_may_not(self, reader_url: str) -> None:
        """With an operator token and a reader's login for it, serve stops at once, saying why."""
        environment = reader_environment(reader_url) | {
            "TASK_HISTORY_API_OPERATOR_TOKEN": "operator-token",
            "TASK_HISTORY_API_PORT": "0",
        }
        code, _, err = await run_command("serve", environment=environment)
        assert code == 1
        assert "task_history_operator" in err
        assert "TASK_HISTORY_API_OPERATOR_DATABASE_URL" in err
        assert len(err.strip().splitlines()) == 1, err

    async def test_the_command_line_records_as_the_consumer(
        self, database_url: str, consumer_url: str
    ) -> None:
        """`dlq purge` run as task_history_consumer deletes and writes the record."""
        await bury(database_url, [letter(n) for n in range(3)])
        environment = reader_environment(consumer_url)
        code, out, err = await run_command(
            "dlq", "purge", "--all", "--yes", environment=environment
        )
        assert code == 0, err
        assert out.endswith("deleted 3; 0 dead letters left\n")
        code, out, err = await run_command("dlq", "actions", "--json", environment=environment)
        assert code == 0, err
        (action,) = json.loads(out)["actions"]
        assert (action["action"], action["via"], action["affected"]) == ("purge", "command", 3)
