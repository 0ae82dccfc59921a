"""Fixtures: a real PostgreSQL for every test, each test in its own database."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest
import structlog

from consumer.broker import Broker
from consumer.settings import Settings, load_settings
from consumer.store import Store
from consumer.topology import Topology
from tests.helpers import admin, with_database

DATABASE_ENV = "TASK_HISTORY_TEST_DATABASE_URL"
LOCAL_DATABASE = "postgresql://postgres@localhost:5432/postgres"
AMQP_ENV = "TASK_HISTORY_TEST_AMQP_URL"
LOCAL_AMQP = "amqp://guest:guest@localhost:5672/"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults, whatever a CLI test configured before."""
    yield
    structlog.reset_defaults()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a private loop, leaving pytest-asyncio's loops alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server: $TASK_HISTORY_TEST_DATABASE_URL, else localhost, else a container."""
    if url := os.environ.get(DATABASE_ENV):
        yield url
        return
    if answers("localhost", 5432):
        yield LOCAL_DATABASE
        return
    try:
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415  # only without a server

        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
    except Exception as exc:  # noqa: BLE001  # any failure here means: no server to test against
        pytest.fail(
            f"no PostgreSQL to test against: set {DATABASE_ENV}, start one on localhost:5432,"
            f" or start Docker so testcontainers can run one ({type(exc).__name__}: {exc})",
            pytrace=False,
        )
    try:
        yield container.get_connection_url()
    finally:
        container.stop()


def unique_name(prefix: str) -> str:
    """A database or broker name no other test run uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def template_database(postgres_server_url: str) -> Iterator[str]:
    """A database migrated once per test run, cloned by every test that needs a schema."""
    name = unique_name("th_template")
    run_sync(admin(postgres_server_url, f'CREATE DATABASE "{name}"'))

    async def migrate() -> None:
        async with Store(with_database(postgres_server_url, name), max_connections=1) as store:
            await store.migrate()

    run_sync(migrate())
    yield name
    run_sync(admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(postgres_server_url: str, template_database: str) -> Iterator[str]:
    """A migrated database of this test's own, dropped afterwards."""
    name = unique_name("th_test")
    run_sync(admin(postgres_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    yield with_database(postgres_server_url, name)
    run_sync(admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database_url(postgres_server_url: str) -> Iterator[str]:
    """An empty database of this test's own, dropped afterwards."""
    name = unique_name("th_empty")
    run_sync(admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
    yield with_database(postgres_server_url, name)
    run_sync(admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """An open store on this test's migrated database."""
    async with Store(database_url) as opened:
        yield opened


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection, as psql or another application would write to the tables."""
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ: $TASK_HISTORY_TEST_AMQP_URL, else localhost, else a container."""
    if url := os.environ.get(AMQP_ENV):
        yield url
        return
    if answers("localhost", 5672):
        yield LOCAL_AMQP
        return
    try:
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415
        from testcontainers.core.waiting_utils import wait_for_logs  # noqa: PLC0415

        container = DockerContainer("rabbitmq:3.13-alpine").with_exposed_ports(5672)
        container.start()
        wait_for_logs(container, "Server startup complete", timeout=120)
    except Exception as exc:  # noqa: BLE001  # any failure here means: no broker to test against
        pytest.fail(
            f"no RabbitMQ to test against: set {AMQP_ENV}, start one on localhost:5672,"
            f" or start Docker so testcontainers can run one ({type(exc).__name__}: {exc})",
            pytrace=False,
        )
    try:
        host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
        yield f"amqp://guest:guest@{host}:{port}/"
    finally:
        container.stop()


@pytest.fixture
async def topology(amqp_url: str) -> AsyncIterator[Topology]:
    """Exchanges and queues of this test's own, declared, and deleted afterwards."""
    names = Topology.named(unique_name("th"))
    async with Broker(amqp_url, topology=names) as broker:
        await broker.declare()
    yield names
    async with Broker(amqp_url, topology=names) as broker:
        await broker.delete()


@pytest.fixture
def settings(database_url: str, amqp_url: str, topology: Topology) -> Settings:
    """Consumer settings for this test's database and topology, tuned for quick tests."""
    return load_settings(
        database_url=database_url,
        amqp_url=amqp_url,
        exchange=topology.exchange,
        queue=topology.queue,
        dead_letter_exchange=topology.dead_letter_exchange,
        dead_letter_queue=topology.dead_letter_queue,
        retry_queue=topology.retry_queue,
        batch_wait_ms=20,
        unknown_task_retry_seconds=0,
        expire_interval_seconds=0,
        retry_backoff_max_seconds=1,
        log_format="json",
        metrics_port=0,  # tests run side by side; the metrics tests pick free ports
    )
