"""The consumer end to end: real broker, real database, events in, rows and dead letters out."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import structlog

from consumer.broker.client import Broker
from consumer.settings import Settings
from consumer.topology import Topology
from tests.conftest import Env
from tests.harness import (
    Bus,
    ConsumerProcess,
    count_dead_letters,
    count_rows,
    dead_letter_rows,
    event,
    running,
    wait_for,
)
from tests.helpers import new_task


async def contents(sql: asyncpg.Connection, task: uuid.UUID) -> list[str]:
    """A task's contents, oldest first."""
    rows = await sql.fetch(
        "SELECT content FROM task_build_history WHERE task_id = $1 ORDER BY created_at, seq", task
    )
    return [row["content"] for row in rows]


class TestStoring:
    """Valid events become rows: in order, capped, once."""

    async def test_105_events_keep_5_to_104(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """105 events with rising timestamps leave events 5 to 104."""
        task = await new_task(sql)
        start = datetime.now(UTC) - timedelta(minutes=10)
        async with Bus(amqp_url, topology) as bus, running(settings):
            await bus.publish_many(
                event(task, f"event {n}", created_at=(start + timedelta(seconds=n)).isoformat())
                for n in range(105)
            )
            await wait_for(lambda: contents(sql, task), lambda c: c[-1:] == ["event 104"])
        assert await contents(sql, task) == [f"event {n}" for n in range(5, 105)]

    async def test_without_created_at_the_last_100_published_stay(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """Events without created_at keep publish order: the last 100 published stay."""
        task = await new_task(sql)
        async with Bus(amqp_url, topology) as bus, running(settings):
            await bus.publish_many(event(task, f"event {n}") for n in range(130))
            await wait_for(lambda: contents(sql, task), lambda c: c[-1:] == ["event 129"])
        assert await contents(sql, task) == [f"event {n}" for n in range(30, 130)]

    async def test_the_same_id_three_times_is_one_row(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """A redelivered or republished event is stored once."""
        task, same = await new_task(sql), str(uuid.uuid4())
        async with Bus(amqp_url, topology) as bus, running(settings):
            for _ in range(3):
                await bus.publish(event(task, "once", id=same))
            await bus.publish(event(task, "last"))
            await wait_for(lambda: contents(sql, task), lambda c: "last" in c)
        assert await contents(sql, task) == ["once", "last"]
        assert await sql.fetchval("SELECT id::text FROM task_build_history LIMIT 1") == same

    async def test_message_id_is_the_id_when_the_body_has_none(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """With no id in the body, a UUID message_id is the idempotency key."""
        task, message_id = await new_task(sql), str(uuid.uuid4())
        async with Bus(amqp_url, topology) as bus, running(settings):
            await bus.publish(event(task), message_id=message_id)
            await bus.publish(event(task), message_id=message_id)
            await bus.publish(event(task, "last"))
            await wait_for(lambda: contents(sql, task), lambda c: "last" in c)
        ids = await sql.fetch("SELECT id::text FROM task_build_history ORDER BY seq")
        assert len(ids) == 2
        assert ids[0]["id"] == message_id

    async def test_string_metadata_is_stored_as_an_object(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """The seed's `metadata: string` holding JSON lands as a jsonb object."""
        task = await new_task(sql)
        async with Bus(amqp_url, topology) as bus, running(settings):
            await bus.publish(event(task, metadata='{"tool": "pytest", "passed": 3}'))
            await bus.publish(event(task, "plain", metadata={"k": [1, 2]}))
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 2)
        rows = await sql.fetch(
            "SELECT metadata, jsonb_typeof(metadata) AS kind FROM task_build_history ORDER BY seq"
        )
        assert [json.loads(r["metadata"]) for r in rows] == [
            {"tool": "pytest", "passed": 3},
            {"k": [1, 2]},
        ]
        assert {r["kind"] for r in rows} == {"object"}

    async def test_all_fields_land_in_their_columns(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """Every field of the event is stored, and expires_at is 20 days after created_at."""
        task, workspace, session, entry = await new_task(sql), *(uuid.uuid4() for _ in range(3))
        created = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
        body = event(
            task,
            "status is done",
            id=str(entry),
            workspace_id=str(workspace),
            session_id=str(session),
            context_type="status_change",
            created_at="2026-11-20T09:30:00+01:00",
            unknown_future_field=True,
        )
        async with Bus(amqp_url, topology) as bus, running(settings):
            await bus.publish(body)
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 1)
        row = await sql.fetchrow("SELECT * FROM task_build_history")
        assert row is not None
        assert (row["id"], row["task_id"], row["workspace_id"], row["session_id"]) == (
            entry,
            task,
            workspace,
            session,
        )
        assert (row["context_type"], row["content"], row["metadata"]) == (
            "status_change",
            "status is done",
            None,
        )
        assert row["created_at"] == created
        assert row["expires_at"] == created + timedelta(days=20)


class TestBadInput:
    """Invalid messages are dead-lettered with a reason; the valid ones around them are stored."""

    async def test_a_row_the_database_refuses_is_found_by_bisection(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """A row refused by a database constraint is dead-lettered alone; the rest are stored."""
        task = await new_task(sql)
        await sql.execute(
            "ALTER TABLE task_build_history ADD CONSTRAINT no_poison CHECK (content <> 'poison')"
        )
        bodies = [event(task, f"ok {n}") for n in range(60)]
        bodies[37] = event(task, "poison")
        async with Bus(amqp_url, topology) as bus:
            await bus.publish_many(bodies)
            async with running(settings):
                await wait_for(lambda: count_dead_letters(settings.database_url), lambda n: n == 1)
                await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 59)
        (dead,) = await dead_letter_rows(settings.database_url)
        assert dead["error"] == "database_rejected"
        assert "no_poison" in dead["detail"]
        assert await contents(sql, task) == [f"ok {n}" for n in range(60) if n != 37]

    async def test_a_poison_message_becomes_a_delivery_limit_row(
        self, settings: Settings, amqp_url: str
    ) -> None:
        """A message the broker dead-letters past the delivery limit is moved into the table."""
        names = Topology.named(f"th_poison_{uuid.uuid4().hex[:8]}", delivery_limit=1)
        async with Broker(amqp_url, topology=names) as broker:
            await broker.declare()
        poisoned = settings.model_copy(
            update={
                "exchange": names.exchange,
                "queue": names.queue,
                "dead_letter_exchange": names.dead_letter_exchange,
                "dead_letter_queue": names.dead_letter_queue,
                "retry_queue": names.retry_queue,
                "delivery_limit": 1,
            }
        )
        try:
            async with Bus(amqp_url, names) as bus:
                await bus.publish(b"\xffpoison", routing_key="history.agent_turn", message_id="p-1")
                queue = await bus.channel.declare_queue(names.queue, passive=True)

                async def poisoned_yet() -> bool:
                    """Requeue the message (each time counts toward the limit) until it is dead."""
                    if await bus.depth(names.dead_letter_queue) == 1:
                        return True
                    message = await queue.get(no_ack=False, fail=False)
                    if message is not None:
                        await message.nack(requeue=True)
                    return False

                await wait_for(poisoned_yet, bool, what="the broker to dead-letter the poison")
                async with running(poisoned):
                    await wait_for(
                        lambda: count_dead_letters(settings.database_url), lambda n: n == 1
                    )
                    await wait_for(lambda: bus.depth(names.dead_letter_queue), lambda n: n == 0)
        finally:
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()
        (row,) = await dead_letter_rows(settings.database_url)
        assert (row["error"], row["message_id"], row["body"]) == (
            "delivery_limit",
            "p-1",
            b"\xffpoison",
        )
        assert "delivered too many times" in row["detail"]
        assert row["routing_key"] == "history.agent_turn"


class TestUnknownTasks:
    """Events for a task that doesn't exist (yet)."""

    async def test_no_retry_window_dead_letters_at_once(
        self, settings: Settings, amqp_url: str, topology: Topology
    ) -> None:
        """With a window of 0 the event is dead-lettered as unknown_task straight away."""
        missing = uuid.uuid4()
        async with Bus(amqp_url, topology) as bus, running(settings):
            await bus.publish(event(missing))
            await wait_for(lambda: count_dead_letters(settings.database_url), lambda n: n == 1)
        (dead,) = await dead_letter_rows(settings.database_url)
        assert dead["error"] == "unknown_task"
        assert str(missing) in dead["detail"]
        assert dead["task_id"] == missing

    async def test_an_event_waits_for_its_task(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """Within the window the event is retried and stored once its task appears."""
        waiting = settings.model_copy(
            update={"unknown_task_retry_seconds": 60, "unknown_task_retry_delay_seconds": 0.3}
        )
        task = uuid.uuid4()
        async with Bus(amqp_url, topology) as bus, running(waiting):
            await bus.publish(event(task, "early bird"))
            await asyncio.sleep(1.0)
            assert await count_rows(settings.database_url) == 0
            await sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
            await wait_for(lambda: contents(sql, task), lambda c: c == ["early bird"])
            assert await count_dead_letters(settings.database_url) == 0
            assert await bus.depth(topology.retry_queue) == 0

    async def test_after_the_window_it_is_dead_lettered(
        self, settings: Settings, amqp_url: str, topology: Topology
    ) -> None:
        """An event whose task never appears is dead-lettered once the window has passed."""
        short = settings.model_copy(
            update={"unknown_task_retry_seconds": 1, "unknown_task_retry_delay_seconds": 0.3}
        )
        async with Bus(amqp_url, topology) as bus, running(short):
            await bus.publish(event(uuid.uuid4()), routing_key="history.agent_turn")
            await wait_for(lambda: count_dead_letters(settings.database_url), lambda n: n == 1)
        (dead,) = await dead_letter_rows(settings.database_url)
        assert dead["error"] == "unknown_task"
        assert "retried for" in dead["detail"]
        assert dead["routing_key"] == "history.agent_turn"
        rounds = re.search(r"retried for \d+ s, (\d+) times", dead["detail"])
        assert rounds is not None, dead["detail"]
        assert int(rounds.group(1)) >= 2

    async def test_create_missing_tasks(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """With create_missing_tasks the task row is created and the event stored."""
        creating = settings.model_copy(update={"create_missing_tasks": True})
        task = uuid.uuid4()
        async with Bus(amqp_url, topology) as bus, running(creating):
            await bus.publish(event(task, "made it"))
            await wait_for(lambda: contents(sql, task), lambda c: c == ["made it"])
        assert await sql.fetchval("SELECT count(*) FROM tasks WHERE id = $1", task) == 1


def fitted(line: Mapping[str, Any]) -> bool:
    """Whether a log line says the prefetch was changed."""
    return str(line["event"]).startswith("prefetch fitted")


class TestMemoryByBytes:
    """Over the byte budget the consumer stops taking deliveries, and takes them again after."""

    async def test_paused_resumed_and_fitted_in_order_with_nothing_lost(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """40 small events, then 60 of 300 KB, on a 1 MiB budget: all stored once, in order.

        The small ones widen the prefetch; the big ones then overrun the budget, so deliveries
        pause, and resume with the prefetch narrowed. The subscription is changed only when
        nothing is on its way, so no delivery goes back to the queue to come again out of order.
        """
        tight = settings.model_copy(
            update={
                "inbox_high_bytes": 1 << 20,
                "inbox_low_bytes": 256 << 10,
                "prefetch": 30,
                "batch_size": 10,
            }
        )
        task, other = await new_task(sql), await new_task(sql)
        padding = "p" * 300_000  # an unknown field: valid, and large
        expected = [f"small {n}" for n in range(40)] + [f"big {n}" for n in range(60)]
        with structlog.testing.capture_logs() as logs:
            async with Bus(amqp_url, topology) as bus:
                await bus.publish_many(event(task, f"small {n}") for n in range(40))
                await bus.publish_many(event(task, f"big {n}", padding=padding) for n in range(60))
                async with running(tight):
                    await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 100)
                    await wait_for(lambda: bus.depth(topology.queue), lambda n: n == 0)
                    # The subscriptions made again still deliver, the dead-letter queue's too.
                    await bus.channel.default_exchange.publish(
                        aio_pika.Message(b"straight in"), routing_key=topology.dead_letter_queue
                    )
                    await bus.publish(event(other, "after"))
                    await wait_for(lambda: contents(sql, other), lambda found: found == ["after"])
                    await wait_for(
                        lambda: count_dead_letters(settings.database_url), lambda n: n == 1
                    )
        events = [line["event"] for line in logs]
        assert any(e.startswith("messages in hand over the byte budget") for e in events)
        assert "taking deliveries again" in events
        counts = [line["prefetch"] for line in logs if fitted(line)]
        assert counts[0] == 30  # widened for the small ones
        assert min(counts) == 3  # 1 MiB over 300 KB
        assert await contents(sql, task) == expected


class TestQuietLogs:
    """At a trickle the log has a line per interval, not a line per event."""

    async def test_twenty_lone_events_make_two_info_lines(
        self, env: Env, amqp_url: str, topology: Topology
    ) -> None:
        """Stored one by one, an interval of an hour: told once at first, once at the stop."""
        task = await new_task(env.sql)
        consumer = ConsumerProcess(
            env.settings.model_copy(update={"batch_log_seconds": 3600}), env.tmp_path / "log"
        )
        consumer.start()
        try:
            async with Bus(amqp_url, topology) as bus:
                for n in range(20):
                    await bus.publish(event(task, f"event {n}"))
                    await wait_for(lambda: count_rows(env.database_url), (n + 1).__eq__)
            consumer.signal(signal.SIGTERM)
            assert await consumer.exit_code() == 0
        finally:
            consumer.kill()
        lines = consumer.log_lines()
        assert [line for line in lines if line["event"] == "batch"] == []  # at debug
        summaries = [line for line in lines if line["event"] == "batches"]
        assert [line["size"] for line in summaries] == [1, 19], consumer.log()
        assert sum(line["stored"] for line in summaries) == 20
