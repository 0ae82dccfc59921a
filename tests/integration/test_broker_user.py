"""The compose file's RabbitMQ definitions, imported into the real broker: enough, and no more."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import asyncpg
import pytest

from consumer.settings import Settings, load_settings
from consumer.topology import Topology
from tests.compose import EXAMPLE_ENV, load_compose
from tests.harness import Bus, count_dead_letters, event, running, wait_for
from tests.helpers import new_task, run_sync
from tests.rabbit_cluster import PrivateBroker


@pytest.fixture
def limited_amqp_url(private_broker: PrivateBroker) -> Iterator[str]:
    """The compose file's definitions, renamed for this test, imported; the history user's URL.

    Imported into a node of the suite's own: users are the broker's, not a vhost's.
    """
    suffix = uuid.uuid4().hex[:10]
    user, admin, vhost = f"th_user_{suffix}", f"th_admin_{suffix}", f"th_vhost_{suffix}"
    password = uuid.uuid4().hex
    compose = load_compose(
        EXAMPLE_ENV
        | {
            "RABBITMQ_USER": user,
            "RABBITMQ_PASSWORD": password,
            "RABBITMQ_ADMIN_USER": admin,
            "RABBITMQ_ADMIN_PASSWORD": uuid.uuid4().hex,
        }
    )
    definitions = json.loads(compose["configs"]["rabbitmq-definitions"]["content"])
    definitions["vhosts"] = [{"name": vhost}]
    for permission in definitions["permissions"]:
        permission["vhost"] = vhost
    tools = private_broker.tools
    tools.import_definitions(definitions)
    try:
        host = urlsplit(private_broker.url).netloc.rsplit("@", 1)[-1]
        url = urlunsplit(("amqp", f"{user}:{password}@{host}", f"/{vhost}", "", ""))
        run_sync(wait_for(lambda: _can_connect(url), bool, what="the imported user"))
        yield url
    finally:
        tools.run("delete_user", user)
        tools.run("delete_user", admin)
        tools.run("delete_vhost", vhost)


async def _can_connect(url: str) -> bool:
    """Whether `url` logs in: the broker imports definitions in the background."""
    try:
        connection = await aio_pika.connect(url)
    except aio_pika.exceptions.AMQPConnectionError:
        return False
    await connection.close()
    return True


@pytest.fixture
def limited_settings(database_url: str, limited_amqp_url: str) -> Settings:
    """Consumer settings with the contract's default names, in the limited user's vhost."""
    return load_settings(
        database_url=database_url,
        amqp_url=limited_amqp_url,
        batch_wait_ms=20,
        unknown_task_retry_seconds=60,
        expire_interval_seconds=0,
        retry_backoff_max_seconds=1,
        log_format="json",
        metrics_port=0,
    )


class TestHistoryUserIsEnough:
    """The limited user can declare, consume, dead-letter and retry."""

    async def test_stores_dead_letters_and_parks(
        self, limited_settings: Settings, sql: asyncpg.Connection
    ) -> None:
        """Valid events are stored, a bad one dead-lettered, one for a missing task parked."""
        topology = Topology()  # the contract's names, which the compose file's definitions use
        task = await new_task(sql)
        async with running(limited_settings) as worker:
            await wait_for(worker.readiness, lambda r: r is None, what="the consumer ready")
            async with Bus(limited_settings.amqp_url, topology) as bus:
                await bus.publish_many([event(task, f"event {n}") for n in range(5)])
                await bus.publish(b"not json")
                await bus.publish(event(uuid.uuid4(), "for a task that doesn't exist yet"))
                await wait_for(
                    lambda: bus.depth(topology.retry_queue), lambda n: n == 1, what="one parked"
                )
                await wait_for(
                    lambda: count_dead_letters(limited_settings.database_url),
                    lambda n: n == 1,
                    what="dead",
                )
        assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 5


class TestHistoryUserIsNoMore:
    """The limited user can't touch other names or other vhosts."""

    async def test_other_names_refused(self, limited_amqp_url: str) -> None:
        """Declaring a queue outside task_build_history* is refused."""
        connection = await aio_pika.connect(limited_amqp_url)
        try:
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await channel.declare_queue("someone_elses_queue", durable=True)
        finally:
            await connection.close()

    async def test_other_vhosts_refused(self, limited_amqp_url: str) -> None:
        """Connecting to the default vhost with the history user is refused."""
        other = urlunsplit(urlsplit(limited_amqp_url)._replace(path="/"))
        # The broker answers Connection.Open with Connection.Close (access refused).
        with pytest.raises(aiormq.exceptions.AMQPError):
            await aio_pika.connect(other)
