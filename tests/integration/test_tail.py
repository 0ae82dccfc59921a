"""Live history: the notify trigger, Store.follow, and `task-history tail`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from consumer.cli import main
from consumer.entries import HistoryEntry
from consumer.store import NOTIFY_CHANNEL, Store
from tests.harness import command_running
from tests.helpers import admin, at, insert_rows, new_task, run_sync

# Generous: it is a bound for a loaded CI machine, not the expected delay (well under a second).
ARRIVAL_TIMEOUT = 5


@pytest.fixture
async def notifications(database_url: str) -> AsyncIterator[asyncio.Queue[dict[str, object]]]:
    """Every notification on the history channel, as parsed JSON, while the test runs."""
    received: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    connection = await asyncpg.connect(database_url)

    def on_notify(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        received.put_nowait(json.loads(payload))

    await connection.add_listener(NOTIFY_CHANNEL, on_notify)
    yield received
    await connection.close()


class TestNotifyTrigger:
    """sql/0002_notify.sql: one notification per task per statement."""

    async def test_one_notification_per_task_per_statement(
        self, sql: asyncpg.Connection, notifications: asyncio.Queue[dict[str, object]]
    ) -> None:
        """A 60-row INSERT over two tasks sends two notifications, with each task's max seq."""
        a, b, sentinel = await new_task(sql), await new_task(sql), await new_task(sql)
        await insert_rows(sql, [(a if n % 3 else b, at(n)) for n in range(60)])
        # Notifications arrive in commit order: once the sentinel's is here, all earlier are.
        await insert_rows(sql, [(sentinel, at(0))])
        got = []
        while True:
            payload = await asyncio.wait_for(notifications.get(), ARRIVAL_TIMEOUT)
            if payload["task_id"] == str(sentinel):
                break
            got.append(payload)
        max_seq = dict(
            await sql.fetch(
                "SELECT task_id::text, max(seq) FROM task_build_history GROUP BY task_id"
            )
        )
        assert sorted(got, key=str) == sorted(
            [{"task_id": str(t), "max_seq": max_seq[str(t)]} for t in (a, b)], key=str
        )

    async def test_rolled_back_insert_sends_nothing(
        self, sql: asyncpg.Connection, notifications: asyncio.Queue[dict[str, object]]
    ) -> None:
        """A transaction that rolls back notifies nobody."""
        task, sentinel = await new_task(sql), await new_task(sql)
        transaction = sql.transaction()
        await transaction.start()
        await insert_rows(sql, [(task, at(1))])
        await transaction.rollback()
        await insert_rows(sql, [(sentinel, at(1))])
        payload = await asyncio.wait_for(notifications.get(), ARRIVAL_TIMEOUT)
        assert payload["task_id"] == str(sentinel)


class TestFollow:
    """Store.follow yields each new entry of its task once."""

    async def test_history_first_then_new_entries_once(
        self, store: Store, sql: asyncpg.Connection
    ) -> None:
        """from_start yields the history, then only new entries of that task, each once."""
        task, other = await new_task(sql), await new_task(sql)
        old = await insert_rows(sql, [(task, at(2)), (task, at(1))])
        entries = store.follow(task, from_start=True)
        got: list[HistoryEntry] = [
            await asyncio.wait_for(anext(entries), ARRIVAL_TIMEOUT) for _ in range(2)
        ]
        assert [entry.id for entry in got] == old[::-1]  # oldest first
        await insert_rows(sql, [(other, at(3))])
        new = await insert_rows(sql, [(task, at(0)), (task, at(5))])  # arrival order, not time
        got = [await asyncio.wait_for(anext(entries), ARRIVAL_TIMEOUT) for _ in range(2)]
        assert [entry.id for entry in got] == new
        await entries.aclose()


class TestTailCommand:
    """`task-history tail TASK_ID` as a process of its own."""

    @pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
    async def test_prints_new_entries_and_stops_on_a_signal(
        self, database_url: str, sql: asyncpg.Connection, stop: signal.Signals
    ) -> None:
        """An insert shows up as a line at once; SIGINT or SIGTERM ends it: exit 0, no error."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, at(1))], content_prefix="before")
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TASK_HISTORY_")},
            "TASK_HISTORY_DATABASE_URL": database_url,
            "TASK_HISTORY_LOG_FORMAT": "json",
        }
        async with command_running(
            "tail", str(task), "--from-start", "--json", environment=environment
        ) as process:
            assert process.stdout is not None
            # The history line means it is listening already: it listens before it reads.
            first = await asyncio.wait_for(process.stdout.readline(), 30)
            assert json.loads(first)["content"] == "before 1"
            [new] = await insert_rows(sql, [(task, at(2))], content_prefix="after")
            line = await asyncio.wait_for(process.stdout.readline(), ARRIVAL_TIMEOUT)
            assert json.loads(line)["id"] == str(new)
            process.send_signal(stop)
            out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        assert out == b""
        # Off a terminal the line that says what it waits for stays: nothing else on stderr.
        assert err.decode() == f"waiting for entries of task {task} (Ctrl-C to stop)\n"

    def test_without_the_notify_migration_it_says_so(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without sql/0002_notify.sql, tail fails at once with one line instead of waiting."""
        run_sync(admin(database_url, "DROP FUNCTION task_build_history_notify_v1() CASCADE"))
        assert main(["--database-url", database_url, "tail", str(uuid.uuid4())]) == 1
        err = capsys.readouterr().err
        database = database_url.rsplit("/", 1)[1]
        assert err.startswith(
            "task-history: error: the database lacks sql/0002_notify.sql:"
            f" run `task-history migrate` [database '{database}' on "
        )
        assert len(err.splitlines()) == 1
