"""Publishing: HistoryPublisher, `task-history publish`, and consumer.testing, on a real broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage

from consumer.cli import main
from consumer.errors import (
    BrokerError,
    ErrorCode,
    HistoryNotSeenError,
    InvalidEventError,
    UnroutableError,
)
from consumer.publisher import HistoryPublisher
from consumer.settings import Settings
from consumer.testing import publish_and_wait, read_history, wait_for_entries
from consumer.topology import Topology
from tests.conftest import unique_name
from tests.harness import Bus, event, running, settings_environment
from tests.helpers import new_task


async def take_all(bus: Bus, queue: str) -> list[AbstractIncomingMessage]:
    """Every message in `queue`, taken in order."""
    declared = await bus.channel.declare_queue(queue, passive=True)
    taken = []
    while (message := await declared.get(fail=False, no_ack=True)) is not None:
        taken.append(message)
    return taken


@pytest.fixture
async def bus(amqp_url: str, topology: Topology) -> AsyncIterator[Bus]:
    """A connection for the test to look into its queues."""
    async with Bus(amqp_url, topology) as opened:
        yield opened


class TestHistoryPublisher:
    """HistoryPublisher against the real broker."""

    async def test_publish_is_confirmed_and_follows_the_contract(
        self, amqp_url: str, topology: Topology, bus: Bus
    ) -> None:
        """A published event arrives persistent, as JSON, with message_id = the body's id."""
        task = uuid.uuid4()
        async with HistoryPublisher(amqp_url, exchange=topology.exchange) as publisher:
            event_id = await publisher.publish(event(task, "hello", context_type="error"))
        [message] = await take_all(bus, topology.queue)
        body = json.loads(message.body)
        assert message.message_id == str(event_id) == body["id"]
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert message.routing_key == "history.error"
        assert body["task_id"] == str(task)
        assert body["content"] == "hello"
        assert body["created_at"].endswith("+00:00")

    async def test_given_id_is_kept(self, amqp_url: str, topology: Topology, bus: Bus) -> None:
        """An event that has an id keeps it, in the body and as message_id."""
        given = uuid.uuid4()
        async with HistoryPublisher(amqp_url, exchange=topology.exchange) as publisher:
            assert await publisher.publish(event(uuid.uuid4(), id=str(given).upper())) == given
        [message] = await take_all(bus, topology.queue)
        assert message.message_id == str(given) == json.loads(message.body)["id"]

    async def test_unroutable_raises(self, amqp_url: str, unbound_exchange: str) -> None:
        """A message no queue is bound for raises UnroutableError instead of vanishing."""
        async with HistoryPublisher(amqp_url, exchange=unbound_exchange) as publisher:
            with pytest.raises(UnroutableError, match="no queue is bound"):
                await publisher.publish(event(uuid.uuid4()))

    async def test_invalid_event_is_refused_before_sending(
        self, amqp_url: str, topology: Topology, bus: Bus
    ) -> None:
        """An invalid event raises InvalidEventError and nothing reaches the queue."""
        async with HistoryPublisher(amqp_url, exchange=topology.exchange) as publisher:
            with pytest.raises(InvalidEventError, match="context_type") as raised:
                await publisher.publish(event(uuid.uuid4(), context_type="gossip"))
            assert raised.value.code is ErrorCode.INVALID_EVENT
            batch = [event(uuid.uuid4()), event(uuid.uuid4(), content="")]
            with pytest.raises(InvalidEventError, match=r"event 1: content"):
                await publisher.publish_many(batch)
        assert await bus.depth(topology.queue) == 0

    async def test_publish_many_sends_every_event(
        self, amqp_url: str, topology: Topology, bus: Bus
    ) -> None:
        """publish_many with a small window sends all events, each with its own id."""
        task = uuid.uuid4()
        async with HistoryPublisher(amqp_url, exchange=topology.exchange) as publisher:
            ids = await publisher.publish_many(
                (event(task, f"step {n}") for n in range(300)), window=16
            )
        assert len(set(ids)) == 300
        messages = await take_all(bus, topology.queue)
        assert {uuid.UUID(m.message_id or "") for m in messages} == set(ids)

    async def test_missing_exchange_is_one_clear_error(self, amqp_url: str) -> None:
        """Connecting to an exchange that doesn't exist says so and points at migrate."""
        publisher = HistoryPublisher(amqp_url, exchange=unique_name("th_missing"))
        with pytest.raises(BrokerError, match="run `task-history migrate`"):
            await publisher.connect()


class TestTestingHelpers:
    """consumer.testing: publish, wait, read."""

    async def test_publish_and_wait_returns_the_stored_entries(
        self, settings: Settings, sql: asyncpg.Connection
    ) -> None:
        """publish_and_wait returns once a running consumer has stored every event."""
        task = await new_task(sql)
        async with running(settings):
            stored = await publish_and_wait(
                [event(task, "one"), event(task, "two")],
                amqp_url=settings.amqp_url,
                database=settings.database_url,
                exchange=settings.exchange,
            )
        assert sorted(entry.content for entry in stored) == ["one", "two"]
        history = await read_history(settings.database_url, task)
        assert [entry.id for entry in history] == [entry.id for entry in stored]
        assert len(await wait_for_entries(settings.database_url, task, 2, timeout=1)) == 2

    async def test_wait_fails_saying_what_it_saw(
        self, database_url: str, sql: asyncpg.Connection
    ) -> None:
        """A wait that times out is an AssertionError naming the count and the entries seen."""
        task = await new_task(sql)
        await sql.execute(
            "INSERT INTO task_build_history (task_id, context_type, content)"
            " VALUES ($1, 'error', 'only one')",
            task,
        )
        with pytest.raises(AssertionError, match=r"3 entries .* it has 1: \[error: 'only one'\]"):
            await wait_for_entries(database_url, task, 3, timeout=0.2)

    async def test_publish_and_wait_names_what_is_missing(
        self, settings: Settings, sql: asyncpg.Connection
    ) -> None:
        """Without a consumer running, publish_and_wait fails naming the missing event ids."""
        task = await new_task(sql)
        given = uuid.uuid4()
        with pytest.raises(HistoryNotSeenError, match=rf"1, of 1 task\(s\), are not: {given}"):
            await publish_and_wait(
                [event(task, id=str(given))],
                amqp_url=settings.amqp_url,
                database=settings.database_url,
                exchange=settings.exchange,
                timeout=0.2,
            )


class TestPublishCommand:
    """`task-history publish`."""

    @pytest.fixture
    def argv(self, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """The global flags for this test's broker; the exchange comes from the environment."""
        monkeypatch.setenv("TASK_HISTORY_EXCHANGE", settings.exchange)
        return ["--amqp-url", settings.amqp_url, "--log-format", "json"]

    def test_one_event_from_flags(
        self,
        argv: list[str],
        settings: Settings,
        topology: Topology,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The flags make one event; its id is printed and it is in the queue."""
        task, session = uuid.uuid4(), uuid.uuid4()
        code = main(
            [
                *argv,
                "publish",
                *("--task", str(task), "--type", "status_change", "--content", "done"),
                *("--metadata", '{"from": "running"}', "--session", str(session)),
            ]
        )
        assert code == 0
        printed = uuid.UUID(capsys.readouterr().out.strip())
        [message] = asyncio.run(_take(settings.amqp_url, topology))
        body = json.loads(message.body)
        assert body["id"] == str(printed) == message.message_id
        assert body["metadata"] == {"from": "running"}
        assert body["session_id"] == str(session)
        assert message.routing_key == "history.status_change"

    @pytest.mark.parametrize(
        "flags",
        [
            ["--task", str(uuid.UUID(int=1)), "--type", "error"],
            ["--task", str(uuid.UUID(int=1)), "--type", "error", "--content", "x", "--file", "-"],
            [
                "--task",
                str(uuid.UUID(int=1)),
                "--type",
                "error",
                "--content",
                "x",
                "--metadata",
                "[]",
            ],
        ],
    )
    def test_bad_flags_are_usage_errors(
        self, argv: list[str], flags: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Missing flags, --file with event flags, or metadata that isn't an object: exit 2."""
        assert main([*argv, "publish", *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("task-history: error: ")
        assert len(err.splitlines()) == 1

    def test_file_with_bad_lines(
        self,
        argv: list[str],
        settings: Settings,
        topology: Topology,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Bad lines are reported by number and skipped; the good ones arrive; exit 1."""
        task = uuid.uuid4()
        lines = [
            json.dumps(event(task, "first")),
            "{not json",
            "",
            json.dumps(event(task, "")),
            json.dumps(event(task, "second", context_type="chat_message")),
            "[1, 2]",
            json.dumps(event(task, "third", created_at="2026-01-01T00:00:00")),
        ]
        path = tmp_path / "events.jsonl"
        path.write_text("\n".join(lines) + "\n")
        assert main([*argv, "publish", "--file", str(path)]) == 1
        captured = capsys.readouterr()
        assert captured.out == "sent 2, refused 4\n"
        reports = captured.err.splitlines()
        assert [report.split(":")[0] for report in reports] == [
            "line 2",
            "line 4",
            "line 6",
            "line 7",
        ]
        assert reports[0].startswith("line 2: invalid_json: ")
        assert (
            reports[1] == "line 4: invalid_event: content: String should have at least 1 character"
        )
        assert reports[2] == "line 6: invalid_event: body must be a JSON object"
        assert "created_at" in reports[3]
        messages = asyncio.run(_take(settings.amqp_url, topology))
        assert sorted(json.loads(m.body)["content"] for m in messages) == ["first", "second"]

    def test_stdin_all_good_exits_0(self, settings: Settings, topology: Topology) -> None:
        """`--file -` reads stdin; all lines sent: exit 0, the summary on stdout, no stderr."""
        task = uuid.uuid4()
        text = "".join(json.dumps(event(task, f"n{n}")) + "\n" for n in range(50))
        result = subprocess.run(
            [sys.executable, "-m", "consumer", "publish", "--file", "-"],
            input=text,
            capture_output=True,
            text=True,
            env=settings_environment(settings),
            check=False,
            timeout=60,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "sent 50, refused 0\n", "")
        assert len(asyncio.run(_take(settings.amqp_url, topology))) == 50


async def _take(url: str, topology: Topology) -> list[AbstractIncomingMessage]:
    async with Bus(url, topology) as bus:
        return await take_all(bus, topology.queue)
