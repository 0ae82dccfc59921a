"""Several broker addresses: connects try them in turn, and a lost connection moves on."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from consumer.errors import BrokerUnavailableError
from consumer.publisher import HistoryPublisher
from consumer.settings import Settings
from consumer.topology import Topology
from tests.harness import (
    Bus,
    count_dead_letters,
    count_rows,
    event,
    proxy_to,
    running,
    through,
    wait_for,
)
from tests.helpers import new_task

DOWN = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1 here


class TestConnecting:
    """The first address that answers is used; none answering is an outage."""

    async def test_a_broker_that_is_down_is_skipped(
        self, settings: Settings, sql: asyncpg.Connection
    ) -> None:
        """The publisher and the consumer both skip the address that is down."""
        task = await new_task(sql)
        listed = settings.model_copy(update={"amqp_url": f"{DOWN},{settings.amqp_url}"})
        async with running(listed):
            async with HistoryPublisher(listed.amqp_url, exchange=listed.exchange) as publisher:
                await publisher.publish(event(task, "through the second address"))
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 1)

    async def test_none_answering_names_every_one(self) -> None:
        """Every address down: one BrokerUnavailableError that names them all."""
        with pytest.raises(BrokerUnavailableError, match="none of the 2 brokers answered"):
            async with HistoryPublisher(f"{DOWN},amqp://guest:guest@127.0.0.1:2/"):
                pass


class TestFailingOver:
    """The consumer's broker goes away: it reconnects through the next address and goes on."""

    async def test_the_first_address_cut_mid_stream(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """200 events before and 200 after the cut: all 400 stored once, none dead-lettered.

        The addresses: the first (cut), one that is down, the second: each reconnect attempt
        takes the next, so the consumer is back through the second after two attempts.
        """
        tasks = [await new_task(sql) for _ in range(8)]  # 50 each: under the cap
        first, second = await proxy_to(amqp_url), await proxy_to(amqp_url)
        listed = settings.model_copy(
            # After the cut: a reconnect attempt on an address that is down, then the second.
            update={
                "amqp_url": f"{through(amqp_url, first.port)},{DOWN},"
                f"{through(amqp_url, second.port)}"
            }
        )
        async with Bus(amqp_url, topology) as bus, running(listed):
            await bus.publish_many(event(tasks[n % 8], f"before {n}") for n in range(200))
            await wait_for(lambda: count_rows(settings.database_url), lambda n: n == 200)
            await first.cut()  # resets the consumer's connection and refuses new ones
            await bus.publish_many(event(tasks[n % 8], f"after {n}") for n in range(200))
            await wait_for(
                lambda: count_rows(settings.database_url), lambda n: n == 400, timeout=60
            )
            await asyncio.sleep(0.5)  # a redelivery stored twice would show now
        assert await count_rows(settings.database_url) == 400
        assert await count_dead_letters(settings.database_url) == 0
        await second.cut()
