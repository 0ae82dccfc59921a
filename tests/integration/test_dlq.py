"""The dead-letter tools against the real broker: list, show, replay and purge lose nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import aio_pika
import asyncpg
import pytest

from consumer.broker.client import Broker
from consumer.broker.headers import dead_letter_headers
from consumer.broker.held import HeldQueue
from consumer.errors import DeadLetterQueueBusyError, ErrorCode
from consumer.settings import Settings
from consumer.topology import Topology
from tests.conftest import unique_name
from tests.harness import (
    Bus,
    count_rows,
    event,
    run_command,
    running,
    settings_environment,
    start_command,
    wait_for,
)
from tests.helpers import new_task


async def task_history(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run `task-history ARGS` in a process of its own with `settings`; (exit code, out, err)."""
    return await run_command(*args, environment=settings_environment(settings))


async def bury(  # noqa: PLR0913  # one parameter per header the consumer writes
    bus: Bus,
    body: dict[str, Any] | bytes,
    *,
    code: ErrorCode,
    message_id: str,
    routing_key: str = "history.agent_turn",
    failed_at: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Put one dead letter in the queue, exactly as the consumer writes it."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = dead_letter_headers(
        dict(extra or {}),
        code=code,
        detail=f"{code.value} for the test",
        routing_key=routing_key,
        failed_at=failed_at or datetime.now(UTC),
    )
    exchange = await bus.channel.get_exchange(bus.topology.dead_letter_exchange)
    await exchange.publish(
        aio_pika.Message(
            raw,
            headers=headers,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=routing_key,
    )


async def mixed(bus: Bus, task: uuid.UUID) -> list[tuple[str, ErrorCode]]:
    """30 dead letters, three codes interleaved; (message id, code) in queue order."""
    codes = [ErrorCode.INVALID_EVENT, ErrorCode.UNKNOWN_TASK, ErrorCode.INVALID_JSON]
    buried = []
    for n in range(30):
        code, message_id = codes[n % 3], str(uuid.uuid4())
        await bury(bus, event(task, f"dead {n}", id=message_id), code=code, message_id=message_id)
        buried.append((message_id, code))
    return buried


def ids(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[str | None]:
    """The message ids, in order."""
    return [message.message_id for message in messages]


@pytest.fixture
async def bus(amqp_url: str, topology: Topology) -> AsyncIterator[Bus]:
    """A connection to this test's topology."""
    async with Bus(amqp_url, topology) as connected:
        yield connected


class TestList:
    """`dlq list` counts and samples without consuming, reordering or losing anything."""

    async def test_counts_by_error_and_task_and_leaves_the_queue_as_it_was(
        self, settings: Settings, bus: Bus
    ) -> None:
        """Same count and order after two listings; the counts and the sample are right."""
        task = uuid.uuid4()
        buried = await mixed(bus, task)
        for _ in range(2):
            code, out, err = await task_history(settings, "dlq", "list", "--json", "--sample", "4")
            assert code == 0, err
        listing = json.loads(out)
        assert listing["total"] == 30
        assert {g["error"]: g["count"] for g in listing["by_error"]} == {
            "invalid_event": 10,
            "unknown_task": 10,
            "invalid_json": 10,
        }
        assert listing["by_error"][0]["tasks"] == [{"task_id": str(task), "count": 10}]
        newest = listing["newest"]
        assert [s["message_id"] for s in newest] == [m for m, _ in reversed(buried[-4:])]
        assert newest[0]["routing_key"] == "history.agent_turn"
        assert newest[0]["replay_count"] == 0
        assert newest[0]["detail"] == f"{buried[-1][1].value} for the test"
        assert ids(await bus.dead_letters()) == [m for m, _ in buried]

    async def test_a_table_for_people(self, settings: Settings, bus: Bus) -> None:
        """Without --json it prints the total, a row per error code and the newest."""
        buried = await mixed(bus, uuid.uuid4())
        code, out, err = await task_history(settings, "dlq", "list")
        assert code == 0, err
        assert f"{bus.topology.dead_letter_queue}: 30 dead letters" in out
        for error in ("invalid_event", "unknown_task", "invalid_json"):
            assert error in out
        assert buried[-1][0] in out
        assert await bus.depth(bus.topology.dead_letter_queue) == 30

    async def test_an_empty_queue(self, settings: Settings) -> None:
        """An empty dead-letter queue is a total of 0, not an error."""
        code, out, err = await task_history(settings, "dlq", "list", "--json")
        assert code == 0, err
        assert json.loads(out)["total"] == 0

    async def test_a_poison_message_is_reported_as_delivery_limit(
        self, settings: Settings, amqp_url: str
    ) -> None:
        """A message that kills its consumer every time is dead-lettered by the broker."""
        names = Topology.named(unique_name("th"), delivery_limit=2)
        async with Broker(amqp_url, topology=names) as broker:
            await broker.declare()
        try:
            async with Bus(amqp_url, names) as bus:
                await bus.publish(event(uuid.uuid4(), "poison"), message_id="poison-1")
                # Each time a consumer takes it and dies without an ack: the channel closes.
                for _ in range(3):
                    channel = await bus.connection.channel()
                    queue = await channel.declare_queue(names.queue, passive=True)
                    await wait_for(partial(queue.get, fail=False), lambda m: m is not None)
                    await channel.close()
                await wait_for(lambda: bus.depth(names.dead_letter_queue), lambda n: n == 1)
                named = settings.model_copy(
                    update={
                        "exchange": names.exchange,
                        "queue": names.queue,
                        "dead_letter_exchange": names.dead_letter_exchange,
                        "dead_letter_queue": names.dead_letter_queue,
                        "retry_queue": names.retry_queue,
                    }
                )
                code, out, err = await task_history(named, "dlq", "list", "--json")
                assert code == 0, err
                listing = json.loads(out)
                assert listing["by_error"][0]["error"] == "delivery_limit"
                (sample,) = listing["newest"]
                assert sample["message_id"] == "poison-1"
                assert "delivered too many times" in sample["detail"]
                assert sample["routing_key"] == "history.agent_turn"
                assert sample["failed_at"] is not None
        finally:
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()


class TestShow:
    """`dlq show` prints one whole message and gives it back."""

    async def test_headers_and_body(self, settings: Settings, bus: Bus) -> None:
        """The properties, the error headers and the parsed body, as JSON."""
        buried = await mixed(bus, uuid.uuid4())
        wanted, wanted_code = buried[7]
        code, out, err = await task_history(settings, "dlq", "show", wanted)
        assert code == 0, err
        shown = json.loads(out)
        assert shown["message_id"] == wanted
        assert shown["headers"]["x-error"] == wanted_code.value
        assert shown["properties"]["content_type"] == "application/json"
        assert shown["body"]["content"] == "dead 7"
        assert ids(await bus.dead_letters()) == [m for m, _ in buried]

    async def test_an_unknown_id(self, settings: Settings, bus: Bus) -> None:
        """An id that isn't there is one line on stderr and exit 1."""
        await mixed(bus, uuid.uuid4())
        code, out, err = await task_history(settings, "dlq", "show", "no-such-id")
        assert (code, out) == (1, "")
        assert err.strip() == (
            f"task-history: error: no dead letter has message id no-such-id (looked at 30 in"
            f" {bus.topology.dead_letter_queue})"
        )
        assert await bus.depth(bus.topology.dead_letter_queue) == 30


class TestReplay:
    """`dlq replay` sends back exactly what the filters select, confirmed, and nothing else."""

    async def test_error_filter_moves_only_those_and_keeps_the_rest_in_order(
        self, settings: Settings, bus: Bus
    ) -> None:
        """--error unknown_task moves those, in order; the others stay in theirs."""
        buried = await mixed(bus, uuid.uuid4())
        code, out, err = await task_history(settings, "dlq", "replay", "--error", "unknown_task")
        assert code == 0, err
        assert out.strip().endswith(
            f"moved 10, skipped 0 at --max-replays, unroutable 0, left 20 in"
            f" {bus.topology.dead_letter_queue}"
        )
        moved = await bus.take_all(bus.topology.queue)
        assert ids(moved) == [m for m, c in buried if c is ErrorCode.UNKNOWN_TASK]
        assert ids(await bus.dead_letters()) == [
            m for m, c in buried if c is not ErrorCode.UNKNOWN_TASK
        ]
        first = moved[0]
        assert first.routing_key == "history.agent_turn"
        assert first.content_type == "application/json"
        assert first.headers["x-replay-count"] == 1
        for cleared in ("x-error", "x-error-detail", "x-failed-at"):
            assert cleared not in first.headers

    async def test_dry_run_moves_nothing(self, settings: Settings, bus: Bus) -> None:
        """--dry-run lists what would move and leaves both queues as they were."""
        buried = await mixed(bus, uuid.uuid4())
        code, out, err = await task_history(
            settings, "dlq", "replay", "--dry-run", "--error", "invalid_json"
        )
        assert code == 0, err
        lines = out.strip().splitlines()
        assert len([line for line in lines if line.startswith("would replay ")]) == 10
        assert lines[-1].startswith("dry run: would move 10,")
        assert lines[-1].endswith(f"left 30 in {bus.topology.dead_letter_queue}")
        assert await bus.depth(bus.topology.queue) == 0
        assert ids(await bus.dead_letters()) == [m for m, _ in buried]

    async def test_limit_is_exact(self, settings: Settings, bus: Bus) -> None:
        """--limit 4 moves the first 4 selected; the next 6 selected stay, in order."""
        buried = await mixed(bus, uuid.uuid4())
        code, _, err = await task_history(
            settings, "dlq", "replay", "--error", "invalid_event", "--limit", "4"
        )
        assert code == 0, err
        selected = [m for m, c in buried if c is ErrorCode.INVALID_EVENT]
        assert ids(await bus.take_all(bus.topology.queue)) == selected[:4]
        assert ids(await bus.dead_letters()) == [m for m, _ in buried if m not in selected[:4]]

    async def test_task_and_age_filters(self, settings: Settings, bus: Bus) -> None:
        """--task and --older-than/--newer-than select by the body's task and x-failed-at."""
        mine, other = uuid.uuid4(), uuid.uuid4()
        now = datetime.now(UTC)
        for n, (task, age) in enumerate([(mine, 3), (other, 3), (mine, 0), (mine, 3)]):
            failed_at = now - timedelta(hours=age)
            await bury(
                bus,
                event(task),
                code=ErrorCode.UNKNOWN_TASK,
                message_id=f"m{n}",
                failed_at=failed_at,
            )
        code, _, err = await task_history(
            settings, "dlq", "replay", "--task", str(mine), "--older-than", "2h"
        )
        assert code == 0, err
        assert ids(await bus.take_all(bus.topology.queue)) == ["m0", "m3"]
        code, _, err = await task_history(settings, "dlq", "replay", "--newer-than", "1h")
        assert code == 0, err
        assert ids(await bus.take_all(bus.topology.queue)) == ["m2"]
        assert ids(await bus.dead_letters()) == ["m1"]

    async def test_a_replayed_failure_counts_and_stops_at_max_replays(
        self, settings: Settings, bus: Bus
    ) -> None:
        """Failing again it carries x-replay-count 1; at --max-replays it stays and is reported."""
        missing = uuid.uuid4()
        async with running(settings):
            await bus.publish(event(missing, "too early"), message_id="early")
            await wait_for(lambda: bus.depth(bus.topology.dead_letter_queue), lambda n: n == 1)
            code, _, err = await task_history(settings, "dlq", "replay", "--max-replays", "1")
            assert code == 0, err
            await wait_for(lambda: bus.depth(bus.topology.dead_letter_queue), lambda n: n == 1)
            await wait_for(lambda: bus.depth(bus.topology.queue), lambda n: n == 0)
            code, out, err = await task_history(settings, "dlq", "replay", "--max-replays", "1")
        assert code == 0, err
        assert "left early: replayed 1 times already (--max-replays 1)" in out
        assert "moved 0, skipped 1 at --max-replays" in out
        (again,) = await bus.dead_letters()
        assert again.headers["x-replay-count"] == 1
        assert again.headers["x-error"] == "unknown_task"
        assert again.message_id == "early"

    async def test_replayed_events_are_stored_once_their_task_exists(
        self, settings: Settings, bus: Bus, sql: asyncpg.Connection
    ) -> None:
        """The operator's fix: create the task, replay, and the consumer stores the events."""
        task = uuid.uuid4()
        async with running(settings):
            for n in range(5):
                await bus.publish(event(task, f"event {n}"), message_id=str(uuid.uuid4()))
            await wait_for(lambda: bus.depth(bus.topology.dead_letter_queue), lambda n: n == 5)
            await sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
            code, _, err = await task_history(settings, "dlq", "replay", "--error", "unknown_task")
            assert code == 0, err
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 5)
        rows = await sql.fetch("SELECT content FROM task_build_history ORDER BY created_at, seq")
        assert [row["content"] for row in rows] == [f"event {n}" for n in range(5)]
        assert await bus.depth(bus.topology.dead_letter_queue) == 0

    async def test_an_unroutable_key_is_left_and_reported(
        self, settings: Settings, bus: Bus
    ) -> None:
        """A routing key no queue is bound for: the message stays, the command exits 1."""
        await bury(bus, event(uuid.uuid4()), code=ErrorCode.INVALID_EVENT, message_id="a")
        await bury(
            bus,
            event(uuid.uuid4()),
            code=ErrorCode.INVALID_EVENT,
            message_id="b",
            routing_key="elsewhere.agent_turn",
        )
        code, out, err = await task_history(settings, "dlq", "replay")
        assert code == 1, err
        assert "left b: no queue is bound" in out
        assert "moved 1," in out
        assert "unroutable 1, left 1" in out
        assert ids(await bus.take_all(bus.topology.queue)) == ["a"]
        assert ids(await bus.dead_letters()) == ["b"]

    async def test_killed_half_way_through_5000_loses_nothing(
        self, settings: Settings, bus: Bus, sql: asyncpg.Connection
    ) -> None:
        """SIGKILL mid-replay, replay again, consume: every event stored once, none left."""
        tasks = [await new_task(sql) for _ in range(100)]
        events = [str(uuid.uuid4()) for _ in range(5000)]
        pending = []
        for n, event_id in enumerate(events):
            body = event(tasks[n % 100], f"event {n}", id=event_id)
            pending.append(bury(bus, body, code=ErrorCode.UNKNOWN_TASK, message_id=event_id))
            if len(pending) == 250:
                await asyncio.gather(*pending)
                pending = []
        await wait_for(lambda: bus.depth(bus.topology.dead_letter_queue), lambda n: n == 5000)

        process = await start_command(
            "dlq",
            "replay",
            environment=settings_environment(settings),
            output=asyncio.subprocess.DEVNULL,
        )
        moved = await wait_for(
            lambda: bus.depth(bus.topology.queue), lambda n: n >= 2000, timeout=60, what="half"
        )
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert moved < 5000, "the replay finished before it could be killed"

        async def both() -> tuple[int, int]:
            return (
                await bus.depth(bus.topology.dead_letter_queue),
                await bus.depth(bus.topology.queue),
            )

        # Every held message comes back once the broker has seen the connection die; a copy
        # sent but not yet acked may be in both queues.
        dead, _ = await wait_for(both, lambda d: d[0] > 0 and sum(d) >= 5000, what="given back")
        assert dead < 5000

        code, _, err = await task_history(settings, "dlq", "replay")
        assert code == 0, err
        async with running(settings):
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 5000)
            await wait_for(lambda: bus.depth(bus.topology.queue), lambda n: n == 0)
        stored = await sql.fetch("SELECT id::text FROM task_build_history")
        assert sorted(row["id"] for row in stored) == sorted(events)
        assert await bus.depth(bus.topology.dead_letter_queue) == 0

    async def test_one_dlq_command_at_a_time(self, amqp_url: str, topology: Topology) -> None:
        """While one command holds the dead letters, a second one is refused at once."""
        async with HeldQueue(amqp_url, queue=topology.dead_letter_queue):
            with pytest.raises(DeadLetterQueueBusyError, match="Another `task-history dlq`"):
                async with HeldQueue(amqp_url, queue=topology.dead_letter_queue):
                    pass
        async with HeldQueue(amqp_url, queue=topology.dead_letter_queue) as held:
            assert held.size == 0


class TestPurge:
    """`dlq purge` deletes only what it is told to, and only when told clearly."""

    async def test_refuses_without_a_filter(self, settings: Settings, bus: Bus) -> None:
        """No filter and no --all: exit 2, one line, nothing deleted."""
        await mixed(bus, uuid.uuid4())
        code, out, err = await task_history(settings, "dlq", "purge", "--yes")
        assert (code, out) == (2, "")
        assert err.startswith("task-history: error: purge needs a filter")
        assert len(err.strip().splitlines()) == 1
        assert await bus.depth(bus.topology.dead_letter_queue) == 30

    async def test_refuses_without_yes_off_a_terminal(self, settings: Settings, bus: Bus) -> None:
        """With no terminal to ask on, --yes is required."""
        await mixed(bus, uuid.uuid4())
        code, _, err = await task_history(settings, "dlq", "purge", "--error", "invalid_json")
        assert code == 2
        assert "--yes" in err
        assert await bus.depth(bus.topology.dead_letter_queue) == 30

    async def test_deletes_the_selected_and_keeps_the_rest_in_order(
        self, settings: Settings, bus: Bus
    ) -> None:
        """--error invalid_json --yes deletes those 10; the 20 others stay in order."""
        buried = await mixed(bus, uuid.uuid4())
        code, out, err = await task_history(
            settings, "dlq", "purge", "--error", "invalid_json", "--yes"
        )
        assert code == 0, err
        assert out.strip() == f"deleted 10, left 20 in {bus.topology.dead_letter_queue}"
        assert ids(await bus.dead_letters()) == [
            m for m, c in buried if c is not ErrorCode.INVALID_JSON
        ]

    async def test_all(self, settings: Settings, bus: Bus) -> None:
        """--all --yes empties the queue; a dry run before it deletes nothing."""
        await mixed(bus, uuid.uuid4())
        code, out, _ = await task_history(settings, "dlq", "purge", "--all", "--dry-run")
        assert code == 0
        assert out.strip().splitlines()[-1].startswith("dry run: would delete 30, left 30")
        assert await bus.depth(bus.topology.dead_letter_queue) == 30
        code, out, _ = await task_history(settings, "dlq", "purge", "--all", "--yes")
        assert code == 0
        assert await bus.depth(bus.topology.dead_letter_queue) == 0


class TestUnknownTaskRetry:
    """An event that arrives before its task waits in the retry queue, no operator needed."""

    async def test_task_created_2_seconds_later_within_a_10_second_window(
        self, settings: Settings, bus: Bus, sql: asyncpg.Connection
    ) -> None:
        """The event is stored by the retries alone; nothing is dead-lettered."""
        waiting = settings.model_copy(
            update={"unknown_task_retry_seconds": 10, "unknown_task_retry_delay_seconds": 1}
        )
        task = uuid.uuid4()
        async with running(waiting):
            await bus.publish(event(task, "early"))
            await asyncio.sleep(2)
            await sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 1)
        assert await bus.depth(bus.topology.dead_letter_queue) == 0
        assert await bus.depth(bus.topology.retry_queue) == 0
