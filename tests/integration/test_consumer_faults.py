"""The consumer under faults: signals, kill -9, outages, and a second replica."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import structlog

from consumer.events import parse_event
from consumer.worker import Worker
from tests.conftest import Env
from tests.harness import (
    Bus,
    assert_stored_exactly_once,
    backlog,
    count_dead_letters,
    count_rows,
    dead_letter_rows,
    drain_in_process,
    event,
    proxied,
    replicas,
    running,
    signal_mid_stream,
    wait_for,
)
from tests.helpers import breaking_on, new_task

BACKLOG = 20_000
# How many entries a task was ever given, those the cap removed included.
RECEIVED = "SELECT received FROM task_build_history_counts WHERE task_id = $1"


async def restart_and_drain(env: Env, bus: Bus) -> None:
    """A fresh consumer process stores the rest of the backlog, then stops cleanly."""
    await drain_in_process(env.settings, bus, env.tmp_path / "second.log", rows=BACKLOG)
    assert await count_dead_letters(env.database_url) == 0


class TestStopping:
    """SIGTERM and kill -9 in the middle of a backlog."""

    async def test_sigterm_mid_stream_exits_0_and_a_restart_stores_the_rest(self, env: Env) -> None:
        """SIGTERM: stop taking, write and ack what is in hand, exit 0; nothing lost."""
        async with Bus(env.amqp_url, env.topology) as bus:
            ids = await backlog(bus, env.sql, BACKLOG, tasks=400)
            first = env.tmp_path / "first.log"
            code, log = await signal_mid_stream(env.settings, first, signal.SIGTERM, stored=0)
            assert code == 0, log
            assert '"stopped"' in log
            stored_then = await count_rows(env.database_url)
            await wait_for(
                lambda: bus.depth(bus.topology.queue), lambda n: stored_then + n == BACKLOG
            )
            await restart_and_drain(env, bus)
        await assert_stored_exactly_once(env.sql, ids)

    async def test_kill_9_mid_stream_loses_and_duplicates_nothing(self, env: Env) -> None:
        """A kill -9 while draining, then a restart: every event stored exactly once."""
        async with Bus(env.amqp_url, env.topology) as bus:
            ids = await backlog(bus, env.sql, BACKLOG, tasks=400)
            first = env.tmp_path / "first.log"
            code, _ = await signal_mid_stream(env.settings, first, signal.SIGKILL, stored=2000)
            assert code == -signal.SIGKILL
            assert await count_rows(env.database_url) < BACKLOG
            await restart_and_drain(env, bus)
        await assert_stored_exactly_once(env.sql, ids)


class TestOutages:
    """The database or the broker goes away for a while."""

    async def test_an_8_second_database_outage_is_waited_out(self, env: Env) -> None:
        """Database cut for 8 s: the consumer retries, logs it, and stores everything once."""
        proxy, through_proxy = await proxied(env.settings, "database_url")
        async with Bus(env.amqp_url, env.topology) as bus:
            with structlog.testing.capture_logs() as logs:
                async with running(through_proxy):
                    ids = await backlog(bus, env.sql, 500, tasks=10)
                    late_task = await new_task(env.sql)
                    await wait_for(lambda: count_rows(env.database_url), lambda n: n == 500)
                    await proxy.cut()
                    late = [uuid.uuid4() for _ in range(300)]
                    await bus.publish_many(event(late_task, id=str(i)) for i in late)
                    await asyncio.sleep(8)
                    assert await count_rows(env.database_url) == 500
                    await proxy.start()
                    # Every late event stored, not only 100 of them: the count reaches 600 while
                    # the last deliveries may still be in hand, and a stop then would send them
                    # back to the queue, unstored.
                    await wait_for(
                        lambda: env.sql.fetchval(RECEIVED, late_task), lambda n: n == len(late)
                    )
                    assert await count_rows(env.database_url) == 600
            assert await count_dead_letters(env.database_url) == 0
        await proxy.cut()
        retries = [line for line in logs if line["event"] == "batch failed; retrying"]
        assert len(retries) >= 3
        assert all("database unavailable" in line["error"] for line in retries)
        # Everything from before the cut, and the newest 100 of the 300 sent during it.
        kept = await env.sql.fetch(
            "SELECT id FROM task_build_history WHERE task_id = $1 ORDER BY created_at, seq",
            late_task,
        )
        position = {event_id: n for n, event_id in enumerate(late)}
        assert [position.get(row["id"]) for row in kept] == list(range(200, 300))
        await assert_stored_exactly_once(env.sql, ids + late[-100:])

    async def test_shutdown_is_bounded_while_the_database_hangs(self, env: Env) -> None:
        """Stopping while the database hangs returns within the shutdown timeout, losing nothing."""
        proxy, hanging = await proxied(env.settings, "database_url", shutdown_timeout_seconds=2)
        worker = Worker.from_settings(hanging)
        run = asyncio.create_task(worker.run())
        async with Bus(env.amqp_url, env.topology) as bus:
            await backlog(bus, env.sql, 100, tasks=2)
            await wait_for(lambda: count_rows(env.database_url), lambda n: n == 100)
            proxy.freeze()
            await backlog(bus, env.sql, 300, tasks=3)
            await asyncio.sleep(1)  # a write is now stuck on the frozen connection
            started = asyncio.get_running_loop().time()
            worker.stop()
            await asyncio.wait_for(run, timeout=30)
            took = asyncio.get_running_loop().time() - started
            proxy.thaw()
            await proxy.cut()
            stored = await count_rows(env.database_url)
            # What it held went back to the queue when its connection closed.
            await wait_for(lambda: bus.depth(env.topology.queue), lambda n: stored + n == 400)
            assert await count_dead_letters(env.database_url) == 0
        assert took < 15, f"stopping took {took:.1f} s"

    async def test_stopping_while_the_broker_hangs_ends_cleanly(self, env: Env) -> None:
        """Stopped with its broker link frozen: the connection is given up, the stop is clean."""
        # Two-second heartbeats: the frozen connection is judged dead well inside the shutdown
        # timeout, and the call waiting on it fails the way the client fails it.
        proxy, hanging = await proxied(env.settings, "amqp_url", amqp_heartbeat_seconds=2)
        worker = Worker.from_settings(hanging)
        async with Bus(env.amqp_url, env.topology) as bus:
            with structlog.testing.capture_logs() as logs:
                run = asyncio.create_task(worker.run())
                ids = await backlog(bus, env.sql, 100, tasks=2)
                await wait_for(lambda: count_rows(env.database_url), lambda n: n == 100)
                proxy.freeze()
                worker.stop()
                await asyncio.wait_for(run, timeout=60)  # raises whatever ended the run
            assert [line for line in logs if line["event"] == "stopped"]
            assert not [line for line in logs if line["event"] == "shutdown timeout"]
            await proxy.cut()
            await assert_stored_exactly_once(env.sql, ids)
            assert await count_dead_letters(env.database_url) == 0

    async def test_a_cut_broker_connection_is_reopened(self, env: Env) -> None:
        """Broker connection cut: the consumer reconnects, redeliveries are absorbed."""
        proxy, through_proxy = await proxied(env.settings, "amqp_url")
        async with Bus(env.amqp_url, env.topology) as bus:
            async with running(through_proxy):
                ids = await backlog(bus, env.sql, 2000, tasks=40)
                await wait_for(lambda: count_rows(env.database_url), lambda n: n > 0)
                await proxy.cut()
                await asyncio.sleep(2)
                await proxy.start()
                await wait_for(
                    lambda: count_rows(env.database_url), lambda n: n == 2000, timeout=60
                )
                await wait_for(lambda: bus.depth(env.topology.queue), lambda n: n == 0, timeout=30)
            assert await count_dead_letters(env.database_url) == 0
        await proxy.cut()
        await assert_stored_exactly_once(env.sql, ids)


class TestReplicas:
    """Two consumers on one queue."""

    async def test_two_consumer_processes_keep_the_cap_exact(self, env: Env) -> None:
        """Two processes writing the same tasks leave exactly the newest 100 per task."""
        tasks = [await new_task(env.sql) for _ in range(5)]
        start = datetime.now(UTC) - timedelta(hours=1)
        async with (
            replicas(env.settings, env.tmp_path, 2) as consumers,
            Bus(env.amqp_url, env.topology) as bus,
        ):
            await bus.publish_many(
                event(
                    tasks[n % 5],
                    f"event {n}",
                    created_at=(start + timedelta(milliseconds=n)).isoformat(),
                )
                for n in range(3000)
            )
            await wait_for(lambda: bus.depth(env.topology.queue), lambda n: n == 0, timeout=60)
            await wait_for(
                lambda: env.sql.fetchval(
                    "SELECT count(*) FROM task_build_history WHERE content = 'event 2999'"
                ),
                lambda n: n == 1,
            )
        codes = [await consumer.exit_code() for consumer in consumers]
        assert codes == [0, 0], [c.log() for c in consumers]
        assert all('"batch"' in consumer.log() for consumer in consumers), "one replica idle"
        for k, task in enumerate(tasks):
            rows = await env.sql.fetch(
                "SELECT content FROM task_build_history WHERE task_id = $1"
                " ORDER BY created_at, seq",
                task,
            )
            newest = [f"event {n}" for n in range(k, 3000, 5)][-100:]
            assert [r["content"] for r in rows] == newest


class TestUnexpectedFailures:
    """Failures nobody planned for still neither crash the consumer nor cost valid events."""

    async def test_a_message_that_breaks_the_parser_fails_alone(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unexpected exception while validating one message: it alone, an internal_error."""
        monkeypatch.setattr("consumer.triage.parse_event", breaking_on(b"explode", parse_event))
        task = await new_task(env.sql)
        async with Bus(env.amqp_url, env.topology) as bus, running(env.settings):
            await bus.publish_many(
                [event(task, "before"), event(task, "explode"), event(task, "after")]
            )
            await wait_for(lambda: count_dead_letters(env.database_url), lambda n: n == 1)
            await wait_for(lambda: count_rows(env.database_url), lambda n: n == 2)
        (dead,) = await dead_letter_rows(env.database_url)
        assert dead["error"] == "internal_error"
        assert dead["detail"] == "RuntimeError: parser bug"

    async def test_a_read_only_database_is_waited_out(self, env: Env) -> None:
        """A database that refuses writes (a failover) is retried, not crashed on."""
        name = urlsplit(env.database_url).path.lstrip("/")
        await env.sql.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        task = await new_task(env.sql)
        async with Bus(env.amqp_url, env.topology) as bus:
            with structlog.testing.capture_logs() as logs:
                async with running(env.settings):
                    await bus.publish_many(event(task, f"event {n}") for n in range(50))

                    async def read_only_retries() -> int:
                        return sum("read-only" in line.get("error", "") for line in logs)

                    await wait_for(read_only_retries, lambda n: n >= 2, what="read-only retries")
                    assert await count_rows(env.database_url) == 0
                    await env.sql.execute(
                        f'ALTER DATABASE "{name}" RESET default_transaction_read_only'
                    )
                    await wait_for(lambda: count_rows(env.database_url), lambda n: n == 50)
            assert await count_dead_letters(env.database_url) == 0
