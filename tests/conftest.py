"""Fixtures: a real PostgreSQL for every test, each test in its own database; markers by folder."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer.broker.client import Broker
from consumer.settings import Settings, load_settings
from consumer.store import Store
from consumer.topology import Topology
from tests.helpers import admin, run_sync, with_database
from tests.outside import node_packages
from tests.rabbit_cluster import PrivateBroker
from tests.rabbit_cluster import private_broker as start_private_broker

DATABASE_ENV = "TASK_HISTORY_TEST_DATABASE_URL"
LOCAL_DATABASE = "postgresql://postgres@localhost:5432/postgres"
AMQP_ENV = "TASK_HISTORY_TEST_AMQP_URL"
LOCAL_AMQP = "amqp://guest:guest@localhost:5672/"
TESTS = Path(__file__).resolve().parent
# Each suite's folder is also its marker: `pytest -m unit` runs without any server.
SUITES = ("unit", "integration", "clients", "reliability", "browser")


def pytest_configure() -> None:
    """Give the processes the tests start SIGINT and SIGTERM as a terminal's user has them.

    A shell starts a job it puts in the background (`pytest &`, nohup, cron, a CI script) with
    SIGINT ignored, and an ignored signal stays ignored across exec: every `task-history` the
    tests start, and then signal, would ignore Ctrl-C. Handled here instead, both signals reach
    those processes at their defaults, however pytest itself was started.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the suite its folder names (tests/unit -> unit, ...)."""
    for item in items:
        path = item.path.resolve()
        if TESTS in path.parents and (suite := path.relative_to(TESTS).parts[0]) in SUITES:
            item.add_marker(suite)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults, whatever a CLI test configured before."""
    yield
    structlog.reset_defaults()


def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def server(
    what: str, variable: str, local: str, container: Callable[[], Any], url_of: Callable[[Any], str]
) -> Iterator[str]:
    """A server's URL: $`variable`, else `local` if it answers, else a testcontainer's."""
    if url := os.environ.get(variable):
        yield url
        return
    parts = urlsplit(local)
    host, port = parts.hostname or "localhost", parts.port or 0
    if answers(host, port):
        yield local
        return
    try:
        started = container()
    except Exception as exc:  # noqa: BLE001  # any failure here means: no server to test against
        pytest.fail(
            f"no {what} to test against: set {variable}, start one on {host}:{port},"
            f" or start Docker so testcontainers can run one ({type(exc).__name__}: {exc})",
            pytrace=False,
        )
    try:
        yield url_of(started)
    finally:
        started.stop()


def postgres_container() -> Any:  # noqa: ANN401  # testcontainers ships no types
    """A started PostgreSQL container."""
    from testcontainers.postgres import PostgresContainer  # noqa: PLC0415  # only without a server

    container = PostgresContainer("postgres:16-alpine", driver=None)
    container.start()
    return container


def rabbitmq_container() -> Any:  # noqa: ANN401  # testcontainers ships no types
    """A started RabbitMQ container, ready for connections."""
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415  # same
    from testcontainers.core.waiting_utils import wait_for_logs  # noqa: PLC0415  # same

    container = DockerContainer("rabbitmq:3.13-alpine").with_exposed_ports(5672)
    container.start()
    wait_for_logs(container, "Server startup complete", timeout=120)
    return container


def rabbitmq_url(container: Any) -> str:  # noqa: ANN401  # testcontainers ships no types
    """The guest URL of a RabbitMQ container."""
    host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
    return f"amqp://guest:guest@{host}:{port}/"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server: $TASK_HISTORY_TEST_DATABASE_URL, else localhost, else a container."""
    yield from server(
        "PostgreSQL",
        DATABASE_ENV,
        LOCAL_DATABASE,
        postgres_container,
        lambda container: container.get_connection_url(),
    )


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
    yield from server("RabbitMQ", AMQP_ENV, LOCAL_AMQP, rabbitmq_container, rabbitmq_url)


@pytest.fixture(scope="session")
def private_broker() -> Iterator[PrivateBroker]:
    """A RabbitMQ node of the suite's own, started once when a test first needs it.

    For tests that restart a broker or import users into one: the servers the suite shares
    with other programs are only ever used, never stopped or reconfigured.
    """
    with start_private_broker() as broker:
        yield broker


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
        refused_row_retry_seconds=0,
        expire_interval_seconds=0,
        retry_backoff_max_seconds=1,
        log_format="json",
        batch_log_seconds=0,  # tests count events in each batch's own line
        metrics_port=0,  # tests run side by side; the metrics tests pick free ports
    )


@dataclass(frozen=True)
class Env:
    """One test's own servers, bundled: its settings, broker names, database and scratch folder."""

    settings: Settings
    amqp_url: str
    topology: Topology
    sql: asyncpg.Connection
    tmp_path: Path

    @property
    def database_url(self) -> str:
        """This test's migrated database."""
        return self.settings.database_url


@pytest.fixture
def env(
    settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection, tmp_path: Path
) -> Env:
    """This test's settings, broker URL, topology, SQL connection and scratch folder in one."""
    return Env(settings, amqp_url, topology, sql, tmp_path)


@pytest.fixture(scope="session")
def node_dir() -> Path:
    """tests/node, where `node` finds ajv, amqplib and tsc at their pinned versions."""
    return node_packages()


@pytest.fixture
async def unbound_exchange(amqp_url: str) -> AsyncIterator[str]:
    """A topic exchange with no queue bound to it, deleted afterwards."""
    name = unique_name("th_unbound")
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC)
    yield name
    await channel.exchange_delete(name)
    await connection.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures tests record as a `summary` property, so the CI log keeps them."""
    reports = terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
    lines = [
        f"{report.nodeid}: {value}"
        for report in reports
        for name, value in getattr(report, "user_properties", [])
        if name == "summary"
    ]
    if lines:
        terminalreporter.section("recorded figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """An in-memory exporter behind this process's tracer provider, installed once."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: OpenTelemetry refuses a second
    return exporter


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    """The spans this test ends, none of another test's."""
    span_exporter.clear()
    yield span_exporter
    span_exporter.clear()
