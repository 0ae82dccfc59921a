"""What one careless or hostile publisher sent, once enough to stop the consumer: now one outcome.

Each message is published through the real broker ahead of a valid event; the test records how
long the message took to end as a row or a dead letter, and how long the event behind it
waited (printed with the run's recorded figures).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest
import structlog

from consumer.broker.client import Broker
from consumer.settings import Settings
from consumer.topology import Topology
from tests.conftest import Env
from tests.harness import (
    Bus,
    count_dead_letters,
    dead_letter_rows,
    event,
    run_command,
    running,
    settings_environment,
    wait_for,
)
from tests.helpers import new_task
from tests.hostile import (
    RawMessage,
    RawPublisher,
    nested_table,
    properties_of,
    shortstr,
    table_bytes,
    text,
)

Record = Callable[[str, object], None]
LOST = "broker connection lost; reconnecting"


async def stored(sql: asyncpg.Connection, task: uuid.UUID) -> dict[str, datetime]:
    """A task's entries: content -> created_at."""
    rows = await sql.fetch(
        "SELECT content, created_at FROM task_build_history WHERE task_id = $1", task
    )
    return {row["content"]: row["created_at"] for row in rows}


class Scene:
    """A consumer running on this test's servers, a known task, and a clock."""

    def __init__(self, env: Env, task: uuid.UUID, bus: Bus) -> None:
        """Publish through `bus`; events belong to `task`."""
        self.env = env
        self.task = task
        self.bus = bus
        self.started = time.monotonic()

    def valid(self, content: str, **fields: object) -> dict[str, Any]:
        """A valid event of the task."""
        return event(self.task, content, id=str(uuid.uuid4()), **fields)

    async def behind(self, content: str) -> float:
        """Publish a valid event now; seconds until it is stored."""
        sent = time.monotonic()
        await self.bus.publish(self.valid(content))
        await wait_for(
            lambda: stored(self.env.sql, self.task), lambda rows: content in rows, timeout=20
        )
        return time.monotonic() - sent

    async def letters(self, count: int) -> list[dict[str, Any]]:
        """Wait for `count` dead letters; every one, oldest first."""
        await wait_for(
            lambda: count_dead_letters(self.env.database_url), lambda n: n >= count, timeout=20
        )
        return await dead_letter_rows(self.env.database_url)


async def raw(env: Env, message: RawMessage) -> None:
    """Publish `message` frame by frame to the history exchange (unless it names another)."""
    if not message.exchange and message.routing_key != env.topology.queue:
        message.exchange = env.topology.exchange
    async with RawPublisher(env.amqp_url) as publisher:
        await publisher.publish(message)


async def case(
    env: Env,
    record: Record,
    name: str,
    send: Callable[[Scene], Awaitable[None]],
    *,
    settings: Settings | None = None,
) -> tuple[Scene, float, list[dict[str, Any]]]:
    """Run one message of the list: sent, then a valid event; (scene, its wait, the log)."""
    task = await new_task(env.sql)
    async with Bus(env.amqp_url, env.topology) as bus:
        scene = Scene(env, task, bus)
        with structlog.testing.capture_logs() as logs:
            async with running(settings or env.settings):
                await scene.behind("warm up")  # consuming
                started = time.monotonic()
                await send(scene)
                waited = await scene.behind("right behind it")
                outcome = time.monotonic() - started
        assert not [line for line in logs if line["event"] == LOST], "the connection dropped"
        assert not [line for line in logs if line.get("log_level") == "critical"]
        captured = [dict(line) for line in logs]
    record(
        "summary",
        f"{name}: settled, and the event behind it stored {waited:.2f} s after it"
        f" was published ({outcome:.2f} s from the message's publish)",
    )
    return scene, waited, captured


class TestThatStoppedTheConsumer:
    """Each message that once stopped or stalled the consumer is now one row or dead letter."""

    async def test_an_invalid_body_with_a_replay_count_past_int32(
        self, env: Env, record_property: Record
    ) -> None:
        """x-replay-count 2147483648 on an invalid body: one invalid_json letter, counting 0."""

        async def send(scene: Scene) -> None:
            await scene.bus.publish(b"{not json", headers={"x-replay-count": 2**31})

        scene, _, _ = await case(env, record_property, "x-replay-count 2**31", send)
        (letter,) = await scene.letters(1)
        assert (letter["error"], letter["replay_count"], letter["headers"]) == (
            "invalid_json",
            0,
            {},
        )

    async def test_straight_to_the_dead_letter_queue_with_a_time_utc_cannot_hold(
        self, env: Env, record_property: Record
    ) -> None:
        """x-failed-at 0001-01-01T00:00:00+23:59 sent to the dead queue: unknown, failed now."""

        async def send(scene: Scene) -> None:
            await scene.bus.channel.default_exchange.publish(
                aio_pika.Message(
                    b'{"content": "looks dead"}',
                    message_id="forged",
                    headers={"x-failed-at": "0001-01-01T00:00:00+23:59", "x-error": "expired"},
                ),
                routing_key=env.topology.dead_letter_queue,
            )

        before = datetime.now(UTC)
        scene, _, _ = await case(
            env, record_property, "x-failed-at in year 0 to the dead queue", send
        )
        (letter,) = await scene.letters(1)
        assert (letter["error"], letter["message_id"]) == ("unknown", "forged")
        assert "published straight to the dead-letter queue" in letter["detail"]
        assert before <= letter["failed_at"] <= datetime.now(UTC)
        async with Bus(env.amqp_url, env.topology) as bus:
            assert await bus.depth(env.topology.dead_letter_queue) == 0

    @pytest.mark.parametrize(
        ("name", "properties", "problem"),
        [
            (
                "headers nested 1,000 deep",
                properties_of(message_id="deep", headers=nested_table(1000)),
                "nested deeper than 32 levels",
            ),
            (
                "a timestamp of 2**64-1",
                properties_of(message_id="late", timestamp=2**64 - 1),
                "timestamp 18446744073709551615 is out of range",
            ),
            (
                "a header name that is not UTF-8",
                properties_of(message_id="bytes", headers=table_bytes([(b"\xff", text("v"))])),
                "not UTF-8",
            ),
            (
                "a message_id that is not UTF-8",
                {**properties_of(), "message_id": shortstr(b"m-\xff")},
                "message_id: not UTF-8",
            ),
        ],
    )
    async def test_properties_the_client_could_not_read(
        self,
        env: Env,
        record_property: Record,
        name: str,
        properties: dict[str, bytes],
        problem: str,
    ) -> None:
        """The connection stays up; the message is an invalid_properties letter within seconds."""

        async def send(scene: Scene) -> None:
            body = json.dumps(scene.valid("hostile")).encode()
            await raw(
                env, RawMessage(body, routing_key="history.agent_turn", properties=properties)
            )

        scene, _, _ = await case(env, record_property, name, send)
        (letter,) = await scene.letters(1)
        assert letter["error"] == "invalid_properties"
        assert problem in letter["detail"]

    async def test_a_routing_key_that_is_not_utf8(self, env: Env, record_property: Record) -> None:
        """A key the topic binding matches but the client can't read: the event is kept."""

        async def send(scene: Scene) -> None:
            body = json.dumps(scene.valid("odd key")).encode()
            await raw(
                env, RawMessage(body, routing_key=b"history.\xff", properties=properties_of())
            )

        scene, _, _ = await case(env, record_property, "a routing key that is not UTF-8", send)
        (letter,) = await scene.letters(1)
        assert letter["error"] == "invalid_properties"
        assert letter["routing_key"] == "history.\ufffd"

    @pytest.mark.parametrize("when", ["2099-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"])
    async def test_a_publishers_received_at(
        self, env: Env, record_property: Record, when: str
    ) -> None:
        """x-received-at from a publisher: created_at is when the consumer received it."""
        before = datetime.now(UTC)

        async def send(scene: Scene) -> None:
            await scene.bus.publish(scene.valid("forged time"), headers={"x-received-at": when})

        scene, _, _ = await case(env, record_property, f"x-received-at {when[:10]}", send)
        created = (await stored(env.sql, scene.task))["forged time"]
        assert before <= created <= datetime.now(UTC)
        assert await count_dead_letters(env.database_url) == 0

    async def test_a_future_unknown_task_since(self, env: Env, record_property: Record) -> None:
        """A publisher's x-unknown-task-since in 2099: the window starts at arrival, and ends."""
        quick = env.settings.model_copy(
            update={"unknown_task_retry_seconds": 2, "unknown_task_retry_delay_seconds": 0.5}
        )

        async def send(scene: Scene) -> None:
            stranger = event(uuid.uuid4(), "lost", id=str(uuid.uuid4()))
            await scene.bus.publish(
                stranger, headers={"x-unknown-task-since": "2099-01-01T00:00:00+00:00"}
            )
            await scene.letters(1)

        scene, _, _ = await case(
            env, record_property, "x-unknown-task-since 2099", send, settings=quick
        )
        (letter,) = await scene.letters(1)
        assert letter["error"] == "unknown_task"
        assert "retried for" in letter["detail"]


class TestForgedRetries:
    """A message made to look like a retry copy changes nothing; the consumer's own count."""

    async def test_a_forged_copy_through_the_default_exchange(self, env: Env) -> None:
        """Sent to the events queue as the retry queue sends, with the retry queue's x-death."""
        task = await new_task(env.sql)
        death = [
            {
                "reason": "expired",
                "queue": env.topology.retry_queue,
                "count": 1,
                "exchange": "",
                "routing-keys": [env.topology.retry_queue],
                "time": datetime(2001, 1, 1, tzinfo=UTC),
            }
        ]
        forged = {
            "x-death": death,
            "x-received-at": "2001-01-01T00:00:00+00:00",
            "x-original-routing-key": "history.elsewhere",
            "x-retry-count": 7,
            "x-task-history-signature": "c2lnbmVkIGJ5IG5vYm9keSBpbiBwYXJ0aWN1bGFy",
        }
        async with Bus(env.amqp_url, env.topology) as bus, running(env.settings):
            await bus.channel.default_exchange.publish(
                aio_pika.Message(
                    json.dumps(event(task, "forged copy")).encode(),
                    headers=forged,  # type: ignore[arg-type]  # every value is a header value
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=env.topology.queue,
            )
            rows = await wait_for(lambda: stored(env.sql, task), bool)
        created = rows["forged copy"]
        assert datetime.now(UTC) - created < timedelta(minutes=1)
        assert await count_dead_letters(env.database_url) == 0


class TestRefusedRows:
    """Rows a constraint refuses wait their window while the rest flows, then are letters."""

    async def test_refused_while_the_rest_flows_then_dead_lettered_with_the_reason(
        self, env: Env, record_property: Record
    ) -> None:
        """Two events refused in a row: parked, the stream goes on; after the window, letters."""
        await env.sql.execute(
            "ALTER TABLE task_build_history ADD CONSTRAINT no_poison CHECK (content !~ 'poison')"
        )
        quick = env.settings.model_copy(
            update={"refused_row_retry_seconds": 3, "unknown_task_retry_delay_seconds": 0.5}
        )

        async def send(scene: Scene) -> None:
            await scene.bus.publish(scene.valid("poison 1"))
            await scene.bus.publish(scene.valid("poison 2"))

        scene, _, logs = await case(
            env, record_property, "two rows refused by a constraint", send, settings=quick
        )
        async with running(quick):
            letters = await scene.letters(2)
        assert [letter["error"] for letter in letters] == ["database_rejected"] * 2
        assert all("no_poison" in letter["detail"] for letter in letters)
        assert all("retried for" in letter["detail"] for letter in letters)
        assert "poison 1" not in await stored(env.sql, scene.task)
        waits = [line for line in logs if line["event"] == "the database refuses rows; they wait"]
        assert len(waits) == 1

    async def test_every_row_refused_is_stored_once_the_constraint_goes(self, env: Env) -> None:
        """A constraint no event passes: none dead-lettered in the window; dropped, all stored."""
        task = await new_task(env.sql)
        await env.sql.execute(
            "ALTER TABLE task_build_history ADD CONSTRAINT closed CHECK (content = 'never')"
        )
        patient = env.settings.model_copy(
            update={"refused_row_retry_seconds": 300, "unknown_task_retry_delay_seconds": 0.5}
        )
        async with Bus(env.amqp_url, env.topology) as bus, running(patient):
            await bus.publish_many(event(task, f"ok {n}") for n in range(40))
            await wait_for(
                lambda: bus.depth(env.topology.retry_queue), lambda n: n > 0, what="rows parked"
            )
            await env.sql.execute("ALTER TABLE task_build_history DROP CONSTRAINT closed")
            await wait_for(lambda: stored(env.sql, task), lambda rows: len(rows) == 40)
        assert await count_dead_letters(env.database_url) == 0


class TestLongBodies:
    """A dead letter's body over 1 MiB is kept as its start, and a replay refuses it."""

    async def test_kept_in_part_and_never_replayed(self, env: Env) -> None:
        """3 MiB of body: 64 KiB kept, with its length and SHA-256; `dlq replay` leaves it."""
        body = b'{"task_id": "' + b"x" * (3 << 20) + b'"}'
        async with Bus(env.amqp_url, env.topology) as bus, running(env.settings):
            await bus.publish(body, message_id="huge")
            await wait_for(lambda: count_dead_letters(env.database_url), lambda n: n == 1)
        (letter,) = await dead_letter_rows(env.database_url)
        assert letter["error"] == "too_large"
        assert letter["body"] == body[: 64 << 10]
        assert letter["original_body_bytes"] == len(body)
        assert len(letter["original_body_sha256"]) == 32
        environment = settings_environment(env.settings)
        code, out, err = await run_command("dlq", "replay", environment=environment)
        assert code == 0, err
        assert f"left #{letter['id']}: its body was {len(body):,} bytes" in out
        assert "moved 0, skipped 0 at --max-replays, 1 kept only in part" in out
        assert await count_dead_letters(env.database_url) == 1
        code, out, _ = await run_command("dlq", "show", "huge", environment=environment)
        assert code == 0
        assert '"body_truncated"' in out


class TestDeadLetterQueueLimit:
    """The dead-letter queue has a delivery limit: a message there is not delivered for ever."""

    async def test_past_the_limit_the_broker_lets_it_go(self, amqp_url: str) -> None:
        """Requeued past the limit, a message leaves the dead-letter queue."""
        names = Topology.named(f"th_deadlimit_{uuid.uuid4().hex[:8]}", delivery_limit=2)
        async with Broker(amqp_url, topology=names) as broker:
            await broker.declare()
        try:
            async with Bus(amqp_url, names) as bus:
                await bus.channel.default_exchange.publish(
                    aio_pika.Message(b"stuck"), routing_key=names.dead_letter_queue
                )
                queue = await bus.channel.declare_queue(names.dead_letter_queue, passive=True)
                deliveries = 0

                async def gone() -> bool:
                    nonlocal deliveries
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        return await bus.depth(names.dead_letter_queue) == 0
                    deliveries += 1
                    await message.nack(requeue=True)
                    return False

                await wait_for(gone, bool, what="the message to leave the dead-letter queue")
                assert 1 <= deliveries <= 3  # the limit (3.x and 4.x count it a little apart)
        finally:
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()

    async def test_one_an_earlier_release_declared_is_used_as_it_is(self, amqp_url: str) -> None:
        """No limit (3.x) or -1 (4.x), as before: declaring the topology over it is no error."""
        names = Topology.named(f"th_olddead_{uuid.uuid4().hex[:8]}")
        try:
            async with Broker(amqp_url, topology=names) as broker:
                old: dict[str, Any] = {"x-queue-type": "quorum"}
                if not broker.broker_version.startswith("3."):
                    old["x-delivery-limit"] = -1
                await broker.channel.declare_queue(
                    names.dead_letter_queue, durable=True, arguments=old
                )
                await broker.declare()
                await broker.declare()
        finally:
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()
