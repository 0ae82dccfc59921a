"""Outages: the database or the broker gone for 30 s (reset or hung), and a broker restart."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from consumer.broker.client import Broker
from consumer.settings import Settings
from tests.conftest import Env
from tests.harness import (
    Bus,
    ConsumerProcess,
    backlog,
    count_dead_letters,
    count_rows,
    proxied,
    wait_for,
)
from tests.rabbit_cluster import PrivateBroker
from tests.reliability.conftest import Figures, check_stored

# How long each outage lasts; the figure, shorter only to try the suite quickly.
OUTAGE_SECONDS = float(os.environ.get("TASK_HISTORY_TEST_OUTAGE_SECONDS", "30"))
EVENTS = 2000  # before the outage, and again during it


async def drained(settings: Settings, bus: Bus, *, what: str) -> int:
    """Wait until both backlogs are stored and the queue is empty; how many dead letters."""
    await wait_for(
        lambda: count_rows(settings.database_url),
        lambda n: n == 2 * EVENTS,
        timeout=120,
        what=f"every event stored after the {what}",
    )
    await wait_for(lambda: bus.depth(bus.topology.queue), lambda n: n == 0, timeout=60)
    return await count_dead_letters(settings.database_url)


def all_json(log: str) -> bool:
    """Whether every line the consumer wrote is a JSON log line (no stray traceback)."""
    return all(line.startswith("{") for line in log.splitlines())


class TestProxiedOutages:
    """A TCP proxy between the consumer and one server resets or freezes for 30 s."""

    @pytest.mark.parametrize(
        ("server", "how"),
        [("database", "reset"), ("database", "hang"), ("broker", "reset"), ("broker", "hang")],
    )
    async def test_the_consumer_waits_it_out(
        self, env: Env, figures: Figures, server: str, how: str
    ) -> None:
        """The consumer stays up, logs its retries, and stores everything once it is over."""
        proxy, through_proxy = await proxied(
            env.settings,
            "database_url" if server == "database" else "amqp_url",
            database_timeout_seconds=5,  # a hung statement becomes an error to retry
            retry_backoff_max_seconds=2,
        )
        consumer = ConsumerProcess(through_proxy, env.tmp_path / "consumer.log")
        consumer.start()
        try:
            async with Bus(env.amqp_url, env.topology) as bus:
                ids = await backlog(bus, env.sql, EVENTS, tasks=40)
                await wait_for(lambda: count_rows(env.database_url), lambda n: n == EVENTS)

                if how == "reset":
                    await proxy.cut()
                else:
                    proxy.freeze()
                ids += await backlog(bus, env.sql, EVENTS, tasks=40)
                for _ in range(int(OUTAGE_SECONDS)):
                    await asyncio.sleep(1)
                    assert consumer.process is not None
                    assert consumer.process.poll() is None, consumer.log()
                if how == "reset":
                    await proxy.start()
                else:
                    proxy.thaw()

                dead = await drained(env.settings, bus, what="outage")
        finally:
            consumer.signal(signal.SIGTERM)
            code = await consumer.exit_code(timeout=60)
            await proxy.cut()
        log = consumer.log()
        assert code == 0, log
        assert all_json(log), "a line not in JSON"
        retries = log.count("retrying") + log.count("broker connection lost")
        figures.faults = 1
        figures.note = f"{server} {how} for {OUTAGE_SECONDS:g} s; {retries} retries logged"
        if (server, how) == ("broker", "reset"):
            assert "broker connection lost; reconnecting" in log
            assert "broker connection restored" in log
        elif server == "database":
            assert retries > 0, log
        await check_stored(env.sql, ids, figures, dead=dead)


@pytest.fixture
async def env_on_private_broker(env: Env, private_broker: PrivateBroker) -> AsyncIterator[Env]:
    """This test's settings and names on a broker node of the suite's own, declared there."""
    async with Broker(private_broker.url, topology=env.topology) as broker:
        await broker.declare()
    settings = env.settings.model_copy(update={"amqp_url": private_broker.url})
    yield Env(settings, private_broker.url, env.topology, env.sql, env.tmp_path)
    async with Broker(private_broker.url, topology=env.topology) as broker:
        await broker.delete()


class TestBrokerRestart:
    """The broker itself restarts under a running consumer (a node of the suite's own)."""

    async def test_the_consumer_reconnects_and_stores_everything(
        self, env_on_private_broker: Env, figures: Figures, private_broker: PrivateBroker
    ) -> None:
        """Messages published before and after a restart are all stored once; exit 0 after."""
        env = env_on_private_broker
        consumer = ConsumerProcess(env.settings, env.tmp_path / "consumer.log")
        consumer.start()
        try:
            async with Bus(env.amqp_url, env.topology) as bus:
                ids = await backlog(bus, env.sql, EVENTS, tasks=40)
            await asyncio.to_thread(private_broker.tools.restart)
            async with Bus(env.amqp_url, env.topology) as bus:
                ids += await backlog(bus, env.sql, EVENTS, tasks=40)
                dead = await drained(env.settings, bus, what="restart")
        finally:
            consumer.signal(signal.SIGTERM)
            code = await consumer.exit_code(timeout=60)
        log = consumer.log()
        assert code == 0, log
        assert "broker connection restored" in log
        assert all_json(log), "a line not in JSON"
        figures.faults = 1
        figures.note = "rabbitmqctl stop_app, start_app"
        await check_stored(env.sql, ids, figures, dead=dead)
