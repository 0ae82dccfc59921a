"""The compose file's PostgreSQL start-up, without Docker: init script, migrate, schedule, consume.

A fresh cluster preloading pg_cron plays the `postgres` service: it runs the compose file's
`postgres-roles` init script, then the `migrate` and `schedule` services' commands as the
superuser; a consumer logs in as the consumer login the init script made, and the `api`
service's reader login reads what it stored and may change nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from consumer.cli import main
from consumer.settings import Settings
from consumer.store import Store
from consumer.topology import Topology
from tests.cluster import pg_cron_cluster
from tests.compose import load_compose
from tests.harness import Bus, event, running, wait_for
from tests.helpers import admin


def on_server(compose_url: str, server_url: str) -> str:
    """The compose file's URL (user, password, database) pointed at the test's server."""
    compose, server = urlsplit(compose_url), urlsplit(server_url)
    credentials = compose.netloc.rsplit("@", 1)[0]
    return urlunsplit(compose._replace(netloc=f"{credentials}@{server.netloc.rsplit('@', 1)[-1]}"))


@pytest.fixture(scope="module")
def compose_server() -> Iterator[str]:
    """A new server, as the compose file starts it: pg_cron's jobs in the history database."""
    with pg_cron_cluster(cron_database="task_history") as url:
        yield url


class TestBootstrap:
    """From an empty server to a consumer storing events as the least-privilege login."""

    async def test_init_migrate_schedule_consume(
        self, compose_server: str, amqp_url: str, topology: Topology, settings: Settings
    ) -> None:
        """Each compose step works in order, and the consumer runs as the init script's login."""
        compose = load_compose()
        await admin(compose_server, compose["configs"]["postgres-roles"]["content"])
        await admin(compose_server, 'CREATE DATABASE "task_history"')
        services = compose["services"]

        owner = on_server(
            services["migrate"]["environment"]["TASK_HISTORY_DATABASE_URL"], compose_server
        )
        for service in ("migrate", "schedule"):
            argv = ["--database-url", owner, *services[service]["command"]]
            if service == "migrate":
                argv.append("--skip-broker")  # the test's broker has its own names
            assert await asyncio.to_thread(main, argv) == 0, service

        login = on_server(
            services["consumer"]["environment"]["TASK_HISTORY_DATABASE_URL"], compose_server
        )
        assert urlsplit(login).username == "history_consumer"
        sql = await asyncpg.connect(owner)
        try:
            task = uuid.uuid4()
            await sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
            as_login = settings.model_copy(update={"database_url": login})
            async with Bus(amqp_url, topology) as bus, running(as_login):
                await bus.publish_many(event(task, f"event {n}") for n in range(10))
                await wait_for(
                    lambda: sql.fetchval("SELECT count(*) FROM task_build_history"),
                    lambda n: n == 10,
                    what="10 events stored by the login role",
                )
            jobs = await sql.fetch("SELECT jobname, database FROM cron.job")
            assert [(j["jobname"], j["database"]) for j in jobs] == [
                ("task_build_history_expire:task_history", "task_history")
            ]
            is_superuser = await sql.fetchval(
                "SELECT rolsuper FROM pg_roles WHERE rolname = 'history_consumer'"
            )
            assert is_superuser is False
        finally:
            await sql.close()
        async with Store(login, max_connections=1) as store:
            assert await store.expiry_job() == "task_build_history_expire:task_history"
        reader = on_server(
            services["api"]["environment"]["TASK_HISTORY_DATABASE_URL"], compose_server
        )
        assert urlsplit(reader).username == "history_reader"
        async with Store(reader, max_connections=1) as store:
            assert len(await store.find_by_task(task)) == 10
        as_reader = await asyncpg.connect(reader)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_reader.execute("DELETE FROM task_build_history")
        finally:
            await as_reader.close()
