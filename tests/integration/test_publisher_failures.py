"""HistoryPublisher where the exchange is missing: one clear error, at once, and it recovers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from consumer.broker.client import Broker
from consumer.errors import BrokerError, UnroutableError
from consumer.publisher import HistoryPublisher
from consumer.topology import Topology
from tests.harness import Bus, event
from tests.vhosts import empty_vhost, vhost_of

FIX = "run `task-history migrate` on this broker to declare it, or check the name"


def missing(exchange: str, vhost: str) -> str:
    """The error a publish to a missing exchange raises."""
    return f"no exchange '{exchange}' in vhost '{vhost}': {FIX}"


class TestMissingExchange:
    """No exchange: `task-history migrate` never ran there, or the name is wrong."""

    async def test_a_vhost_where_migrate_never_ran_fails_at_connect(self, amqp_url: str) -> None:
        """Connecting raises one BrokerError naming the exchange and the fix, without waiting."""
        with empty_vhost(amqp_url) as url:
            started = time.monotonic()
            with pytest.raises(BrokerError) as raised:
                async with HistoryPublisher(url):
                    pass
            assert time.monotonic() - started < 5
        assert str(raised.value) == missing("task_build_history", vhost_of(url))

    async def test_a_wrong_exchange_name_fails_at_connect(self, amqp_url: str) -> None:
        """A typo in the exchange name: the same error, naming the name given."""
        name = f"task_build_histroy_{uuid.uuid4().hex[:8]}"
        with pytest.raises(BrokerError) as raised:
            async with HistoryPublisher(amqp_url, exchange=name):
                pass
        assert str(raised.value) == missing(name, vhost_of(amqp_url))

    async def test_an_exchange_deleted_while_open_fails_each_publish_then_recovers(
        self, amqp_url: str, topology: Topology
    ) -> None:
        """Each publish meanwhile raises the clear error; once it is back, publishing works."""
        task = uuid.uuid4()
        async with HistoryPublisher(amqp_url, exchange=topology.exchange) as publisher:
            await publisher.publish(event(task, "before"))
            async with Bus(amqp_url, topology) as bus:
                await bus.channel.exchange_delete(topology.exchange)
            for attempt in range(3):
                started = time.monotonic()
                with pytest.raises(BrokerError) as raised:
                    await publisher.publish(event(task, f"while missing {attempt}"))
                assert str(raised.value) == missing(topology.exchange, vhost_of(amqp_url))
                assert time.monotonic() - started < 5
                await asyncio.sleep(0.1 * attempt)
            async with Broker(amqp_url, topology=topology) as broker:
                await broker.declare()  # what `task-history migrate` does
            after = await publisher.publish(event(task, "after"))
        async with Bus(amqp_url, topology) as bus:
            taken = await bus.take_all(topology.queue)
        assert [json.loads(m.body)["content"] for m in taken] == ["before", "after"]
        assert json.loads(taken[1].body)["id"] == str(after)


class TestReturned:
    """The exchange exists, but no queue is bound for the key."""

    async def test_a_return_names_the_key_and_the_exchange(self, amqp_url: str) -> None:
        """UnroutableError says which key, which exchange, and what to check."""
        names = Topology.named(f"th_unbound_{uuid.uuid4().hex[:8]}")
        async with Broker(amqp_url, topology=names) as broker:
            await broker.declare()
            await broker.channel.queue_delete(names.queue)
            try:
                async with HistoryPublisher(amqp_url, exchange=names.exchange) as publisher:
                    with pytest.raises(UnroutableError) as raised:
                        await publisher.publish(event(uuid.uuid4()))
                    # The channel stays usable: a return closes nothing.
                    with pytest.raises(UnroutableError):
                        await publisher.publish(event(uuid.uuid4()))
            finally:
                await broker.delete()
        assert str(raised.value).startswith(
            f"no queue is bound for routing key 'history.agent_turn' on exchange"
            f" '{names.exchange}' (NO_ROUTE): "
        )
