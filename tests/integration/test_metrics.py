"""Metrics and health endpoints, scraped while a real consumer runs against both servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from consumer.api.server import serving as serving_api
from consumer.cli import main
from consumer.errors import ConfigurationError
from consumer.settings import Settings
from consumer.topology import Topology
from consumer.worker import Worker
from tests.harness import Bus, event, proxied, running, through, wait_for
from tests.helpers import insert_rows, new_task
from tests.integration.test_api import api_settings


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def with_metrics(settings: Settings, **more: object) -> Settings:
    """`settings` serving metrics on a free loopback port."""
    return settings.model_copy(
        update={"metrics_host": "127.0.0.1", "metrics_port": free_port(), **more}
    )


async def get(settings: Settings, path: str) -> tuple[int, str]:
    """GET a path of the consumer's HTTP server: the status and the body."""
    url = f"http://127.0.0.1:{settings.metrics_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def answers(settings: Settings) -> bool:
    """Whether the consumer's HTTP server accepts requests yet."""
    try:
        await get(settings, "/healthz")
    except aiohttp.ClientConnectionError:
        return False
    return True


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Worker]:
    """A consumer running in this process, its HTTP server answering."""
    async with running(settings) as worker:
        await wait_for(lambda: answers(settings), bool, what="the HTTP server to answer")
        yield worker


async def scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and labels."""
    status, text = await get(settings, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def ready_again_with(settings: Settings, sql: asyncpg.Connection, *, stored: int) -> None:
    """Wait until /readyz says ready again and the table holds `stored` entries."""
    await wait_for(lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready again")
    await wait_for(
        lambda: sql.fetchval("SELECT count(*) FROM task_build_history"),
        lambda n: n == stored,
        what=f"{stored} entries stored",
    )


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample's value; 0 when absent."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class TestCounters:
    """The counters match what was sent."""

    async def test_stored_duplicates_and_dead_letters(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """50 valid events, one sent twice, and 3 invalid ones: 50 stored, 1 duplicate, 3 dead."""
        settings = with_metrics(settings)
        task = await new_task(sql)
        created = datetime.now(UTC) - timedelta(seconds=30)
        bodies = [event(task, f"event {n}", id=str(uuid.uuid4())) for n in range(50)]
        bodies[0]["created_at"] = created.isoformat()
        async with Bus(amqp_url, topology) as bus, serving(settings):
            await bus.publish_many([*bodies, bodies[1]])
            await bus.publish(b"{not json")
            await bus.publish(event(task, ""))
            await bus.publish(event(task, "x", context_type="bogus"))
            samples = await wait_for(
                lambda: scrape(settings),
                lambda s: value(s, "task_history_batch_messages_sum") == 54,
                what="54 messages handled",
            )
        assert value(samples, "task_history_events_received_total") == 54
        assert value(samples, "task_history_events_stored_total") == 50
        assert value(samples, "task_history_events_duplicate_total") == 1
        dead = "task_history_events_dead_lettered_total"
        assert value(samples, dead, code="invalid_json") == 1
        assert value(samples, dead, code="invalid_event") == 2
        assert value(samples, dead, code="unknown_task") == 0
        assert value(samples, "task_history_batch_messages_count") >= 1
        assert value(samples, "task_history_batch_write_seconds_count") >= 1
        assert value(samples, "task_history_event_lag_seconds_count") == 50
        # The one event created 30 s ago lands in no bucket below 30 s.
        assert value(samples, "task_history_event_lag_seconds_bucket", le="10.0") <= 49
        assert value(samples, "task_history_batch_retries_total") == 0

    async def test_waiting_for_task(
        self, settings: Settings, amqp_url: str, topology: Topology
    ) -> None:
        """An event for a task that doesn't exist yet counts as waiting for its task."""
        settings = with_metrics(settings, unknown_task_retry_seconds=300)
        async with Bus(amqp_url, topology) as bus, serving(settings):
            await bus.publish(event(uuid.uuid4()))
            samples = await wait_for(
                lambda: scrape(settings),
                lambda s: value(s, "task_history_events_waiting_for_task_total") == 1,
                what="one event waiting for its task",
            )
        assert value(samples, "task_history_events_stored_total") == 0


class TestExpiryMetrics:
    """Expiry runs and the rows they delete are counted; a pg_cron job makes the loop stand down."""

    async def test_runs_and_deleted_rows(self, settings: Settings, sql: asyncpg.Connection) -> None:
        """The loop expires and counts; it stands down for a job noted, unless it is silent."""
        settings = with_metrics(settings, expire_interval_seconds=0.2)
        task = await new_task(sql)
        long_ago = datetime.now(UTC) - timedelta(days=30)
        await insert_rows(sql, [(task, long_ago + timedelta(seconds=n)) for n in range(7)])
        async with serving(settings):
            samples = await wait_for(
                lambda: scrape(settings),
                lambda s: value(s, "task_history_expired_entries_total") == 7,
                what="7 expired entries deleted",
            )
            assert value(samples, "task_history_expiry_runs_total", outcome="done") >= 1
            await sql.execute(
                "INSERT INTO task_build_history_expiry_job (job_name, cron_database, schedule)"
                " VALUES ('task_build_history_expire:test', 'postgres', '*/5 * * * *')"
            )
            scheduled = "task_history_expiry_runs_total"
            stood_down = await wait_for(
                lambda: scrape(settings),
                lambda s: value(s, scheduled, outcome="scheduled") >= 1,
                what="the loop standing down",
            )
            await insert_rows(sql, [(task, long_ago)])
            before = value(stood_down, scheduled, outcome="scheduled")
            await wait_for(
                lambda: scrape(settings),
                lambda s: value(s, scheduled, outcome="scheduled") >= before + 2,
                what="two more intervals left to pg_cron",
            )
            assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 1
            # A job silent for over a day is taken as broken: the loop expires again.
            await sql.execute(
                "UPDATE task_build_history_expiry_job SET registered_at = now() - interval '26h'"
            )
            await wait_for(
                lambda: scrape(settings),
                lambda s: value(s, "task_history_expired_entries_total") == 8,
                what="the loop expiring again beside a silent job",
            )
            await insert_rows(sql, [(task, long_ago)])
            await sql.execute("DELETE FROM task_build_history_expiry_job")
            await wait_for(
                lambda: scrape(settings),
                lambda s: value(s, "task_history_expired_entries_total") == 9,
                what="the loop expiring again without a job",
            )


class TestHealth:
    """/healthz says the process answers; /readyz says it consumes with both servers up."""

    async def test_ready_while_consuming_and_not_while_the_database_is_down(
        self, settings: Settings
    ) -> None:
        """/readyz is 200 while consuming, 503 while the database is cut, 200 again after."""
        proxy, through_proxy = await proxied(settings, "database_url")
        settings = with_metrics(through_proxy)
        async with serving(settings):
            await wait_for(lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready")
            assert await get(settings, "/healthz") == (200, '{"status":"ok"}')
            await proxy.cut()
            _, body = await wait_for(
                lambda: get(settings, "/readyz"), lambda r: r[0] == 503, what="not ready"
            )
            assert "database unavailable" in body
            assert (await get(settings, "/healthz"))[0] == 200
            await proxy.start()
            await wait_for(lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready")
        await proxy.cut()

    async def test_not_ready_while_the_broker_connection_is_frozen(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """A connection that stops carrying bytes is not ready within 15 s, and ready after.

        One line is logged each way, and what was published meanwhile is stored after.
        """
        proxy, through_proxy = await proxied(settings, "amqp_url")
        settings = with_metrics(through_proxy)
        task = await new_task(sql)
        with structlog.testing.capture_logs() as logs:
            async with serving(settings), Bus(amqp_url, topology) as bus:
                await wait_for(
                    lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready"
                )
                proxy.freeze()
                frozen = time.monotonic()
                for n in range(20):
                    await bus.publish(event(task, f"while frozen {n}"))
                _, body = await wait_for(
                    lambda: get(settings, "/readyz"),
                    lambda r: r[0] == 503,
                    what="not ready",
                    timeout=15,
                )
                assert time.monotonic() - frozen <= 15
                assert "the broker did not answer" in body
                proxy.thaw()
                await ready_again_with(settings, sql, stored=20)
        await proxy.cut()
        changes = [line for line in logs if line["event"] in {"not ready", "ready again"}]
        assert [line["event"] for line in changes] == ["not ready", "ready again"]
        assert changes[0]["reason"].startswith("the broker did not answer")

    async def test_not_ready_while_messages_wait_and_nothing_is_delivered(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """Writes stuck behind a lock fill the prefetch: a stall, reported until writes resume."""
        settings = with_metrics(settings, batch_size=10, stall_seconds=2)
        task = await new_task(sql)
        async with serving(settings), Bus(amqp_url, topology) as bus:
            await wait_for(lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready")
            lock = sql.transaction()
            await lock.start()
            await sql.execute("LOCK TABLE task_build_history IN ACCESS EXCLUSIVE MODE")
            await bus.publish_many(event(task, f"event {n}") for n in range(100))
            _, body = await wait_for(
                lambda: get(settings, "/readyz"), lambda r: r[0] == 503, what="a stall"
            )
            assert "messages wait in the queue, and none was delivered for 2 s" in body
            await lock.rollback()
            await wait_for(lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready")
            await wait_for(
                lambda: sql.fetchval("SELECT count(*) FROM task_build_history"),
                lambda n: n == 100,
                what="every event stored",
            )

    async def test_a_frozen_connection_is_dropped_after_missed_heartbeats(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """With no frame for about three heartbeats the connection is dropped and made again."""
        proxy, through_proxy = await proxied(settings, "amqp_url", amqp_heartbeat_seconds=1)
        settings = with_metrics(through_proxy)
        task = await new_task(sql)
        with structlog.testing.capture_logs() as logs:
            async with serving(settings), Bus(amqp_url, topology) as bus:
                await wait_for(
                    lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready"
                )
                proxy.freeze()
                await wait_for(
                    lambda: asyncio.sleep(0, [line["event"] for line in logs]),
                    lambda events: "broker connection lost; reconnecting" in events,
                    what="the connection dropped",
                    timeout=20,
                )
                await bus.publish(event(task, "after the drop"))
                proxy.thaw()
                await ready_again_with(settings, sql, stored=1)
        await proxy.cut()

    async def test_alive_but_not_ready_while_waiting_for_the_database(
        self, settings: Settings
    ) -> None:
        """Before it consumes, /healthz is 200 and /readyz 503; after it stops, nothing answers."""
        settings = with_metrics(settings, database_url=through(settings.database_url, free_port()))
        async with serving(settings):
            status, body = await get(settings, "/readyz")
            assert status == 503
            assert "not consuming" in body
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(settings, "/healthz")

    async def test_health_command(
        self,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`task-history health [--ready]` exits 0 against a ready consumer, 1 with no consumer."""
        settings = with_metrics(settings)
        monkeypatch.setenv("TASK_HISTORY_METRICS_PORT", str(settings.metrics_port))
        async with serving(settings):
            await wait_for(lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready")
            assert await asyncio.to_thread(main, ["health"]) == 0
            assert await asyncio.to_thread(main, ["health", "--ready"]) == 0
            assert capsys.readouterr().out.endswith("ok\nready\n")  # after the in-process logs
            assert await asyncio.to_thread(main, ["health", "--ready", "--json"]) == 0
            url = f"http://127.0.0.1:{settings.metrics_port}/readyz"
            ready = json.loads(capsys.readouterr().out.splitlines()[-1])
            assert ready == {"url": url, "code": 200, "status": "ready"}
        capsys.readouterr()  # the consumer's own lines as it stops
        assert await asyncio.to_thread(main, ["health"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("task-history: error: http://127.0.0.1:")
        assert len(err.splitlines()) == 1
        assert await asyncio.to_thread(main, ["health", "--ready", "--json"]) == 1
        gone = capsys.readouterr()
        assert json.loads(gone.out) == {"url": url, "code": None, "status": None}
        assert gone.err.startswith(f"task-history: error: {url} does not answer")

    async def test_the_same_answers_as_serve(self, settings: Settings, database_url: str) -> None:
        """/healthz and /readyz of `consume` and of `serve`: the same status, type and body."""
        settings = with_metrics(settings)
        async with serving(settings), serving_api(api_settings(database_url)) as api:
            await wait_for(lambda: get(settings, "/readyz"), lambda r: r[0] == 200, what="ready")
            async with aiohttp.ClientSession() as http:
                for path in ("/healthz", "/readyz"):
                    answers = []
                    for url in (f"http://127.0.0.1:{settings.metrics_port}{path}", api + path):
                        async with http.get(url) as response:
                            kind = response.headers["Content-Type"]
                            answers.append((response.status, kind, await response.json()))
                    assert answers[0] == answers[1], path

    async def test_a_taken_port_is_one_clear_error(self, settings: Settings) -> None:
        """A metrics port already in use stops the consumer at start with a readable error."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            settings = settings.model_copy(
                update={"metrics_host": "127.0.0.1", "metrics_port": taken.getsockname()[1]}
            )
            with pytest.raises(
                ConfigurationError,
                match=r"can't serve metrics: cannot listen on 127\.0\.0\.1:\d+: the port is taken",
            ):
                async with running(settings):
                    pass
