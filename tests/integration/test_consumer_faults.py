"""The consumer under faults: signals, kill -9, outages, and a second replica."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import structlog

from consumer import worker
from consumer.entries import NewEntry
from consumer.events import parse_event
from consumer.settings import Settings
from consumer.topology import Topology
from consumer.worker import Worker
from tests.harness import (
    Bus,
    ConsumerProcess,
    TcpProxy,
    assert_stored_exactly_once,
    backlog,
    count_rows,
    event,
    running,
    through,
    wait_for,
)
from tests.helpers import new_task

BACKLOG = 20_000


async def restart_and_drain(settings: Settings, bus: Bus, log: Path) -> None:
    """A fresh consumer process stores the rest of the backlog, then stops cleanly."""
    second = ConsumerProcess(settings, log)
    second.start()
    try:
        await wait_for(
            lambda: count_rows(settings.database_url), lambda n: n == BACKLOG, timeout=60
        )
        await wait_for(lambda: bus.depth(bus.topology.queue), lambda n: n == 0)
    finally:
        second.signal(signal.SIGTERM)
        assert await second.exit_code() == 0, second.log()
    assert await bus.depth(bus.topology.dead_letter_queue) == 0


class TestStopping:
    """SIGTERM and kill -9 in the middle of a backlog."""

    async def test_sigterm_mid_stream_exits_0_and_a_restart_stores_the_rest(
        self,
        settings: Settings,
        amqp_url: str,
        topology: Topology,
        sql: asyncpg.Connection,
        tmp_path: Path,
    ) -> None:
        """SIGTERM: stop taking, write and ack what is in hand, exit 0; nothing lost."""
        async with Bus(amqp_url, topology) as bus:
            ids = await backlog(bus, sql, BACKLOG, tasks=400)
            first = ConsumerProcess(settings, tmp_path / "first.log")
            first.start()
            try:
                await wait_for(lambda: count_rows(settings.database_url), lambda n: n > 0)
                first.signal(signal.SIGTERM)
                assert await first.exit_code(timeout=30) == 0, first.log()
            finally:
                first.kill()
            assert '"stopped"' in first.log()
            stored_then = await count_rows(settings.database_url)
            await wait_for(lambda: bus.depth(topology.queue), lambda n: stored_then + n == BACKLOG)
            await restart_and_drain(settings, bus, tmp_path / "second.log")
        await assert_stored_exactly_once(sql, ids)

    async def test_kill_9_mid_stream_loses_and_duplicates_nothing(
        self,
        settings: Settings,
        amqp_url: str,
        topology: Topology,
        sql: asyncpg.Connection,
        tmp_path: Path,
    ) -> None:
        """A kill -9 while draining, then a restart: every event stored exactly once."""
        async with Bus(amqp_url, topology) as bus:
            ids = await backlog(bus, sql, BACKLOG, tasks=400)
            first = ConsumerProcess(settings, tmp_path / "first.log")
            first.start()
            try:
                await wait_for(lambda: count_rows(settings.database_url), lambda n: n > 2000)
                first.signal(signal.SIGKILL)
                assert await first.exit_code() == -signal.SIGKILL
            finally:
                first.kill()
            assert await count_rows(settings.database_url) < BACKLOG
            await restart_and_drain(settings, bus, tmp_path / "second.log")
        await assert_stored_exactly_once(sql, ids)


class TestOutages:
    """The database or the broker goes away for a while."""

    async def test_an_8_second_database_outage_is_waited_out(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """Database cut for 8 s: the consumer retries, logs it, and stores everything once."""
        target = urlsplit(settings.database_url)
        proxy = TcpProxy(target.hostname or "localhost", target.port or 5432)
        await proxy.start()
        proxied = settings.model_copy(
            update={"database_url": through(settings.database_url, proxy.port)}
        )
        async with Bus(amqp_url, topology) as bus:
            with structlog.testing.capture_logs() as logs:
                async with running(proxied):
                    ids = await backlog(bus, sql, 500, tasks=10)
                    late_task = await new_task(sql)
                    await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 500)
                    await proxy.cut()
                    late = [uuid.uuid4() for _ in range(300)]
                    await bus.publish_many(event(late_task, id=str(i)) for i in late)
                    await asyncio.sleep(8)
                    assert await count_rows(settings.database_url) == 500
                    await proxy.start()
                    await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 600)
                    await wait_for(lambda: bus.depth(topology.queue), lambda n: n == 0)
            assert await bus.depth(topology.dead_letter_queue) == 0
        await proxy.cut()
        retries = [line for line in logs if line["event"] == "batch failed; retrying"]
        assert len(retries) >= 3
        assert all("database unavailable" in line["error"] for line in retries)
        # Everything from before the cut, and the newest 100 of the 300 sent during it.
        await assert_stored_exactly_once(sql, ids + late[-100:])

    async def test_shutdown_is_bounded_while_the_database_hangs(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """Stopping while the database hangs returns within the shutdown timeout, losing nothing."""
        target = urlsplit(settings.database_url)
        proxy = TcpProxy(target.hostname or "localhost", target.port or 5432)
        await proxy.start()
        hanging = settings.model_copy(
            update={
                "database_url": through(settings.database_url, proxy.port),
                "shutdown_timeout_seconds": 2,
            }
        )
        worker = Worker.from_settings(hanging)
        run = asyncio.create_task(worker.run())
        async with Bus(amqp_url, topology) as bus:
            await backlog(bus, sql, 100, tasks=2)
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 100)
            proxy.freeze()
            await backlog(bus, sql, 300, tasks=3)
            await asyncio.sleep(1)  # a write is now stuck on the frozen connection
            started = asyncio.get_running_loop().time()
            worker.stop()
            await asyncio.wait_for(run, timeout=30)
            took = asyncio.get_running_loop().time() - started
            proxy.thaw()
            await proxy.cut()
            stored = await count_rows(settings.database_url)
            # What it held went back to the queue when its connection closed.
            await wait_for(lambda: bus.depth(topology.queue), lambda n: stored + n == 400)
            assert await bus.depth(topology.dead_letter_queue) == 0
        assert took < 15, f"stopping took {took:.1f} s"

    async def test_a_cut_broker_connection_is_reopened(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """Broker connection cut: the consumer reconnects, redeliveries are absorbed."""
        target = urlsplit(amqp_url)
        proxy = TcpProxy(target.hostname or "localhost", target.port or 5672)
        await proxy.start()
        proxied = settings.model_copy(update={"amqp_url": through(amqp_url, proxy.port)})
        async with Bus(amqp_url, topology) as bus:
            async with running(proxied):
                ids = await backlog(bus, sql, 2000, tasks=40)
                await wait_for(lambda: count_rows(settings.database_url), lambda n: n > 0)
                await proxy.cut()
                await asyncio.sleep(2)
                await proxy.start()
                await wait_for(
                    lambda: count_rows(settings.database_url), lambda n: n == 2000, timeout=60
                )
                await wait_for(lambda: bus.depth(topology.queue), lambda n: n == 0, timeout=30)
            assert await bus.depth(topology.dead_letter_queue) == 0
        await proxy.cut()
        await assert_stored_exactly_once(sql, ids)


class TestReplicas:
    """Two consumers on one queue."""

    async def test_two_consumer_processes_keep_the_cap_exact(
        self,
        settings: Settings,
        amqp_url: str,
        topology: Topology,
        sql: asyncpg.Connection,
        tmp_path: Path,
    ) -> None:
        """Two processes writing the same tasks leave exactly the newest 100 per task."""
        tasks = [await new_task(sql) for _ in range(5)]
        start = datetime.now(UTC) - timedelta(hours=1)
        small_batches = settings.model_copy(update={"batch_size": 50, "prefetch": 100})
        consumers = [ConsumerProcess(small_batches, tmp_path / f"c{n}.log") for n in range(2)]
        for consumer in consumers:
            consumer.start()
        try:
            async with Bus(amqp_url, topology) as bus:
                await asyncio.sleep(1.5)  # both subscribed, so both get a share
                await bus.publish_many(
                    event(
                        tasks[n % 5],
                        f"event {n}",
                        created_at=(start + timedelta(milliseconds=n)).isoformat(),
                    )
                    for n in range(3000)
                )
                await wait_for(lambda: bus.depth(topology.queue), lambda n: n == 0, timeout=60)
                await wait_for(
                    lambda: sql.fetchval(
                        "SELECT count(*) FROM task_build_history WHERE content = 'event 2999'"
                    ),
                    lambda n: n == 1,
                )
        finally:
            for consumer in consumers:
                consumer.signal(signal.SIGTERM)
            codes = [await consumer.exit_code() for consumer in consumers]
        assert codes == [0, 0], [c.log() for c in consumers]
        assert all('"batch"' in consumer.log() for consumer in consumers), "one replica idle"
        for k, task in enumerate(tasks):
            rows = await sql.fetch(
                "SELECT content FROM task_build_history WHERE task_id = $1"
                " ORDER BY created_at, seq",
                task,
            )
            newest = [f"event {n}" for n in range(k, 3000, 5)][-100:]
            assert [r["content"] for r in rows] == newest


class TestUnexpectedFailures:
    """Failures nobody planned for still neither crash the consumer nor cost valid events."""

    async def test_a_message_that_breaks_the_parser_fails_alone(
        self,
        settings: Settings,
        amqp_url: str,
        topology: Topology,
        sql: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """An unexpected exception while validating one message dead-letters only that one."""

        def fragile(body: bytes, **kwargs: Any) -> NewEntry:  # noqa: ANN401  # passes through
            if b"explode" in body:
                raise RuntimeError("parser bug")
            return parse_event(body, **kwargs)

        monkeypatch.setattr(worker, "parse_event", fragile)
        task = await new_task(sql)
        async with Bus(amqp_url, topology) as bus, running(settings):
            await bus.publish_many(
                [event(task, "before"), event(task, "explode"), event(task, "after")]
            )
            await wait_for(lambda: bus.depth(topology.dead_letter_queue), lambda n: n == 1)
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 2)
            (dead,) = await bus.dead_letters()
        assert dead.headers["x-error"] == "invalid_event"
        assert "RuntimeError: parser bug" in str(dead.headers["x-error-detail"])

    async def test_a_read_only_database_is_waited_out(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """A database that refuses writes (a failover) is retried, not crashed on."""
        name = urlsplit(settings.database_url).path.lstrip("/")
        await sql.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        task = await new_task(sql)
        async with Bus(amqp_url, topology) as bus:
            with structlog.testing.capture_logs() as logs:
                async with running(settings):
                    await bus.publish_many(event(task, f"event {n}") for n in range(50))

                    async def read_only_retries() -> int:
                        return sum("read-only" in line.get("error", "") for line in logs)

                    await wait_for(read_only_retries, lambda n: n >= 2, what="read-only retries")
                    assert await count_rows(settings.database_url) == 0
                    await sql.execute(
                        f'ALTER DATABASE "{name}" RESET default_transaction_read_only'
                    )
                    await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 50)
            assert await bus.depth(topology.dead_letter_queue) == 0
