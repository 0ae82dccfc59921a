"""The dead-letter exchange is internal: clients can't publish to it, the broker still can."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq.exceptions
import pytest
import structlog

from consumer.broker.client import Broker
from consumer.errors import BrokerError
from consumer.publisher import HistoryPublisher
from consumer.settings import Settings
from consumer.topology import Topology
from tests.harness import Bus, count_dead_letters, dead_letter_rows, event, running, wait_for

NOT_INTERNAL = "the dead-letter exchange is not internal"


def settings_for(settings: Settings, names: Topology) -> Settings:
    """`settings` on the topology `names`."""
    return settings.model_copy(
        update={
            "exchange": names.exchange,
            "queue": names.queue,
            "dead_letter_exchange": names.dead_letter_exchange,
            "dead_letter_queue": names.dead_letter_queue,
            "retry_queue": names.retry_queue,
            "delivery_limit": names.delivery_limit,
        }
    )


@pytest.fixture
async def short_limit(amqp_url: str) -> AsyncIterator[Topology]:
    """A topology of this test's own with a delivery limit of 1, declared; deleted after."""
    names = Topology.named(f"th_dlx_{uuid.uuid4().hex[:8]}", delivery_limit=1)
    async with Broker(amqp_url, topology=names) as broker:
        await broker.declare()
    yield names
    async with Broker(amqp_url, topology=names) as broker:
        await broker.delete()


class TestInternalDeadLetterExchange:
    """New deployments get an internal dead-letter exchange."""

    async def test_a_client_publish_to_it_is_refused(
        self, amqp_url: str, topology: Topology
    ) -> None:
        """A publish to the dlx closes the channel with 403; nothing reaches the dead queue."""
        async with Bus(amqp_url, topology) as bus:
            channel = await bus.connection.channel(publisher_confirms=True)
            dlx = await channel.get_exchange(topology.dead_letter_exchange, ensure=False)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="internal exchange"):
                await dlx.publish(aio_pika.Message(b"{}"), routing_key="history.agent_turn")
            assert await bus.depth(topology.dead_letter_queue) == 0

    async def test_history_publisher_says_what_to_publish_to(
        self, amqp_url: str, topology: Topology
    ) -> None:
        """HistoryPublisher pointed at the dlx raises one clear BrokerError."""
        async with HistoryPublisher(amqp_url, exchange=topology.dead_letter_exchange) as publisher:
            with pytest.raises(BrokerError) as raised:
                await publisher.publish(event(uuid.uuid4()))
        message = str(raised.value)
        assert "cannot publish to internal exchange" in message
        assert topology.dead_letter_exchange in message
        assert "publish events to the history exchange" in message

    async def test_the_broker_still_dead_letters_into_it(
        self, settings: Settings, amqp_url: str, short_limit: Topology
    ) -> None:
        """Past the delivery limit, and at a message TTL, the broker's dead letters arrive."""
        async with Bus(amqp_url, short_limit) as bus:
            queue = await bus.channel.declare_queue(short_limit.queue, passive=True)
            await bus.publish(b"\xffpoison", routing_key="history.agent_turn", message_id="p-1")
            exchange = await bus.channel.get_exchange(short_limit.exchange)
            await exchange.publish(
                aio_pika.Message(b"short-lived", message_id="t-1", expiration=0.05),
                routing_key="history.error",
            )

            async def both_dead() -> int:
                """Requeue what is delivered (each time counts toward the limit)."""
                message = await queue.get(no_ack=False, fail=False)
                if message is not None:
                    await message.nack(requeue=True)
                return await bus.depth(short_limit.dead_letter_queue)

            await wait_for(both_dead, lambda n: n == 2, what="the broker to dead-letter both")
            async with running(settings_for(settings, short_limit)):
                await wait_for(lambda: count_dead_letters(settings.database_url), lambda n: n == 2)
        rows = {row["message_id"]: row for row in await dead_letter_rows(settings.database_url)}
        assert rows["p-1"]["error"] == "delivery_limit"
        assert rows["t-1"]["error"] == "ttl_expired"
        assert rows["t-1"]["routing_key"] == "history.error"

    async def test_declaring_it_again_changes_nothing_and_warns_of_nothing(
        self, amqp_url: str, topology: Topology
    ) -> None:
        """`migrate` twice on an internal dlx: no error, no warning."""
        with structlog.testing.capture_logs() as logs:
            async with Broker(amqp_url, topology=topology) as broker:
                await broker.declare()
                await broker.declare()
        assert not [line for line in logs if line["event"].startswith(NOT_INTERNAL)]


class TestExistingDeadLetterExchange:
    """A dlx declared by an earlier release (not internal) keeps working, with one warning."""

    async def test_an_existing_non_internal_dlx_is_used_as_it_is(self, amqp_url: str) -> None:
        """Declared twice over it: no 406, the dead queue bound, one warning each time."""
        names = Topology.named(f"th_olddlx_{uuid.uuid4().hex[:8]}")
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        await channel.declare_exchange(
            names.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        try:
            with structlog.testing.capture_logs() as logs:
                async with Broker(amqp_url, topology=names) as broker:
                    await broker.declare()
                    await broker.declare()
                    assert broker.consuming is False
            warnings = [line for line in logs if line["event"].startswith(NOT_INTERNAL)]
            assert len(warnings) == 2  # one per declare: one per `migrate` or `consume`
            assert warnings[0]["exchange"] == names.dead_letter_exchange
            assert "task-history migrate" in warnings[0]["event"]
            # Still not internal, and still bound: what is published to it reaches the queue.
            dlx = await channel.get_exchange(names.dead_letter_exchange, ensure=False)
            await dlx.publish(aio_pika.Message(b"x"), routing_key="history.error")
            async with Bus(amqp_url, names) as bus:
                await wait_for(lambda: bus.depth(names.dead_letter_queue), lambda n: n == 1)
        finally:
            await connection.close()
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()

    async def test_made_internal_by_the_documented_procedure(self, amqp_url: str) -> None:
        """Delete the old dlx, declare again: internal, the dead queue's letters kept and bound."""
        names = Topology.named(f"th_olddlx_{uuid.uuid4().hex[:8]}")
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        await channel.declare_exchange(
            names.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        try:
            async with Broker(amqp_url, topology=names) as broker:
                await broker.declare()
            old = await channel.get_exchange(names.dead_letter_exchange, ensure=False)
            await old.publish(aio_pika.Message(b"kept"), routing_key="history.error")
            await channel.exchange_delete(names.dead_letter_exchange)
            with structlog.testing.capture_logs() as logs:
                async with Broker(amqp_url, topology=names) as broker:
                    await broker.declare()
            assert not [line for line in logs if line["event"].startswith(NOT_INTERNAL)]
            async with Bus(amqp_url, names) as bus:
                assert await bus.depth(names.dead_letter_queue) == 1
                refused = await bus.connection.channel()
                dlx = await refused.get_exchange(names.dead_letter_exchange, ensure=False)
                with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                    await dlx.publish(aio_pika.Message(b"x"), routing_key="history.error")
        finally:
            await connection.close()
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()

    async def test_a_dlx_of_another_type_is_refused_clearly(self, amqp_url: str) -> None:
        """An exchange of that name but another type: one clear error, not a silent mix-up."""
        names = Topology.named(f"th_olddlx_{uuid.uuid4().hex[:8]}")
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        await channel.declare_exchange(
            names.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        try:
            async with Broker(amqp_url, topology=names) as broker:
                with pytest.raises(BrokerError, match="other arguments"):
                    await broker.declare()
        finally:
            await channel.exchange_delete(names.dead_letter_exchange)
            await connection.close()
            async with Broker(amqp_url, topology=names) as broker:
                await broker.delete()
