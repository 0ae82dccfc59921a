"""The AMQP topology of contract §2, declared by migrate and by the consumer, idempotently."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest

from consumer.broker.client import Broker
from consumer.cli import main
from consumer.errors import BrokerError
from consumer.settings import Settings
from consumer.store import EXPIRE_LOCK, Store
from consumer.topology import Topology
from tests.harness import Bus, count_rows, event, running, wait_for
from tests.helpers import insert_rows, new_task, run_sync


class TestDeclare:
    """Declaring exchanges and queues."""

    async def test_declaring_again_is_harmless(self, amqp_url: str, topology: Topology) -> None:
        """A second declare with the same names and arguments succeeds and keeps messages."""
        async with Bus(amqp_url, topology) as bus:
            await bus.publish(b"{}", routing_key="history.agent_turn")
            async with Broker(amqp_url, topology=topology) as broker:
                await broker.declare()
            assert await bus.depth(topology.queue) == 1

    async def test_history_keys_route_to_the_queue_and_others_nowhere(
        self, amqp_url: str, topology: Topology
    ) -> None:
        """`history.<anything>` reaches the events queue; another key is unroutable."""
        async with Bus(amqp_url, topology) as bus:
            for context_type in ("chat_message", "status_change", "brand_new_kind"):
                await bus.publish(b"{}", routing_key=f"history.{context_type}")
            assert await bus.depth(topology.queue) == 3
        async with Broker(amqp_url, topology=topology) as broker:
            # The consumer's own channel: confirms, and unroutable messages raised.
            exchange = await broker.channel.get_exchange(topology.exchange)
            with pytest.raises(aio_pika.exceptions.PublishError):
                await exchange.publish(aio_pika.Message(b"{}"), routing_key="other.thing")

    async def test_a_conflicting_queue_is_reported(self, amqp_url: str) -> None:
        """A queue of that name declared with other arguments gives one clear error."""
        names = Topology.named(f"th_{uuid.uuid4().hex[:8]}")
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        await channel.declare_queue(names.queue, durable=True)  # a classic queue
        try:
            async with Broker(amqp_url, topology=names) as broker:
                with pytest.raises(BrokerError, match="other arguments"):
                    await broker.declare()
        finally:
            await connection.close()
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()

    async def test_an_existing_dead_letter_queue_is_used_as_it_is(self, amqp_url: str) -> None:
        """A dead-letter queue declared before with other arguments is used, not refused."""
        names = Topology.named(f"th_{uuid.uuid4().hex[:8]}")
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        arguments: dict[str, Any] = {"x-queue-type": "quorum", "x-max-length": 1_000_000}
        await channel.declare_queue(names.dead_letter_queue, durable=True, arguments=arguments)
        try:
            async with Broker(amqp_url, topology=names) as broker:
                await broker.declare()
                await broker.declare()
            async with Bus(amqp_url, names) as bus:
                # The broker dead-letters into it (clients may not publish to the internal dlx).
                await bus.publish(b"x", routing_key="history.error")
                events = await bus.channel.declare_queue(names.queue, passive=True)
                message = await events.get(no_ack=False)
                await message.reject(requeue=False)
                await wait_for(
                    lambda: bus.depth(names.dead_letter_queue), lambda n: n == 1, timeout=10
                )
        finally:
            await connection.close()
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()

    def test_migrate_declares_the_topology(
        self,
        settings: Settings,
        topology: Topology,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """`task-history migrate` declares exchange and queues (the fixture's names)."""

        async def drop() -> None:
            async with Broker(settings.amqp_url, topology=topology) as broker:
                await broker.channel.queue_delete(topology.queue)

        async def depth() -> int:
            async with Bus(settings.amqp_url, topology) as bus:
                return await bus.depth(topology.queue)

        for key, value in settings.model_dump(exclude_none=True).items():
            monkeypatch.setenv(f"TASK_HISTORY_{key.upper()}", str(value))
        run_sync(drop())
        assert main(["migrate"]) == 0
        assert run_sync(depth()) == 0
        out = capsys.readouterr().out
        assert f"declared exchange {topology.exchange} and queue {topology.queue}" in out


class TestExpirySchedule:
    """The consumer's own expiry loop."""

    async def test_the_consumer_expires_rows_on_schedule(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """With an interval set, expired rows disappear while the consumer runs."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, datetime.now(UTC) - timedelta(days=30))] * 5)
        expiring = settings.model_copy(update={"expire_interval_seconds": 0.2})
        async with Bus(amqp_url, topology) as bus, running(expiring):
            await bus.publish(event(task, "fresh"))
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 1)
        assert await sql.fetchval("SELECT content FROM task_build_history") == "fresh"

    async def test_one_replica_at_a_time(self, store: Store, sql: asyncpg.Connection) -> None:
        """While another session holds the expiry lock, expire_exclusively steps aside."""
        task = await new_task(sql)
        await insert_rows(sql, [(task, datetime.now(UTC) - timedelta(days=30))] * 3)
        await sql.execute("SELECT pg_advisory_lock($1)", EXPIRE_LOCK)
        assert await store.expire_exclusively() is None
        await sql.execute("SELECT pg_advisory_unlock($1)", EXPIRE_LOCK)
        assert await store.expire_exclusively() == (3, 0)
