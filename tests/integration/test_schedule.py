"""`task-history schedule`: expiry as a pg_cron job, on a throwaway server that preloads pg_cron."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from consumer.cli import main
from consumer.store import Store
from tests.cluster import CRON_ENV, pg_cron_cluster
from tests.harness import wait_for
from tests.helpers import admin, insert_rows, new_task, with_database


@pytest.fixture(scope="session")
def cron_server_url() -> Iterator[str]:
    """A PostgreSQL that preloads pg_cron: $TASK_HISTORY_TEST_CRON_DATABASE_URL, else a new one.

    The new one is a cluster of its own (see tests.cluster), pg_cron's jobs table in its
    database `postgres`, removed after the run.
    """
    if url := os.environ.get(CRON_ENV):
        yield url
        return
    with pg_cron_cluster() as url:
        yield url


@pytest.fixture
async def history_on_cron_server(cron_server_url: str) -> AsyncIterator[str]:
    """A migrated database of this test's own on the pg_cron server (not pg_cron's database)."""
    name = f"th_cron_{uuid.uuid4().hex[:12]}"
    await admin(cron_server_url, f'CREATE DATABASE "{name}"')
    url = with_database(cron_server_url, name)
    async with Store(url, max_connections=1) as store:
        await store.migrate()
    yield url
    await admin(cron_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def cli(*argv: str) -> int:
    """Run the command line in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


async def cron_jobs(cron_server_url: str, name: str) -> list[asyncpg.Record]:
    """pg_cron's jobs of that name, as its own database has them."""
    connection = await asyncpg.connect(cron_server_url)
    try:
        jobs: list[asyncpg.Record] = await connection.fetch(
            "SELECT jobname, schedule, command, database FROM cron.job WHERE jobname = $1", name
        )
        return jobs
    finally:
        await connection.close()


class TestWithoutPgCron:
    """On a server without pg_cron, `schedule` says so and changes nothing."""

    async def test_one_line_and_exit_1(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The shared test server has no pg_cron preloaded: exit 1, one line naming the fix."""
        assert await cli("--database-url", database_url, "schedule") == 1
        err = capsys.readouterr().err
        assert err.startswith("task-history: error: pg_cron is not available")
        assert "shared_preload_libraries" in err
        assert len(err.splitlines()) == 1

    async def test_a_bad_schedule_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A --cron that isn't five fields or a shorthand: exit 2 before connecting."""
        assert await cli("schedule", "--cron", "every minute") == 2
        assert "--cron" in capsys.readouterr().err


class TestWithPgCron:
    """With pg_cron, the job is registered where pg_cron lives, runs, and can be removed."""

    async def test_job_runs_in_the_history_database(
        self, cron_server_url: str, history_on_cron_server: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The job lives in pg_cron's database, runs in ours, and deletes the expired entries."""
        url = history_on_cron_server
        database = url.rsplit("/", 1)[1]
        sql = await asyncpg.connect(url)
        try:
            task = await new_task(sql)
            long_ago = datetime.now(UTC) - timedelta(days=30)
            await insert_rows(sql, [(task, long_ago + timedelta(seconds=n)) for n in range(5)])
            await insert_rows(sql, [(task, datetime.now(UTC))])

            assert await cli("--database-url", url, "schedule", "--cron", "* * * * *") == 0
            out = capsys.readouterr().out
            assert f"task_build_history_expire:{database}" in out
            jobs = await cron_jobs(cron_server_url, f"task_build_history_expire:{database}")
            assert [(j["schedule"], j["database"]) for j in jobs] == [("* * * * *", database)]
            assert jobs[0]["command"] == 'CALL "public".task_build_history_expire_v2(10000)'
            async with Store(url, max_connections=1) as store:
                assert await store.expiry_job() == f"task_build_history_expire:{database}"

            # pg_cron runs jobs on the minute: wait for the first run to delete the 5. The
            # procedure commits its deletes before it records the run: wait for the record.
            await wait_for(
                lambda: sql.fetchval("SELECT last_deleted FROM task_build_history_expiry_job"),
                lambda n: n == 5,
                timeout=150,
                what="pg_cron's job to delete the expired entries",
            )
            assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 1

            assert await cli("--database-url", url, "schedule", "--unschedule") == 0
            assert "removed pg_cron job" in capsys.readouterr().out
            assert await cron_jobs(cron_server_url, f"task_build_history_expire:{database}") == []
            assert await sql.fetchval("SELECT count(*) FROM task_build_history_expiry_job") == 0
            assert await cli("--database-url", url, "schedule", "--unschedule") == 0
            assert "no pg_cron expiry job" in capsys.readouterr().out
        finally:
            await sql.close()

    async def test_in_pg_crons_own_database(
        self, cron_server_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """History in pg_cron's own database: scheduled there; a second run replaces the job."""
        # The throwaway server's pg_cron database is `postgres` (a server setting, fixed until
        # a restart), so this test keeps history in that database itself.
        postgres = with_database(cron_server_url, "postgres")
        async with Store(postgres, max_connections=1) as store:
            await store.migrate()
        job = "task_build_history_expire:postgres"
        assert await cli("--database-url", postgres, "schedule", "--cron", "*/5 * * * *") == 0
        capsys.readouterr()
        assert await cli("--database-url", postgres, "schedule", "--cron", "@hourly", "--json") == 0
        assert json.loads(capsys.readouterr().out) == {
            "job": job,
            "cron_database": "postgres",
            "database": "postgres",
            "schedule": "@hourly",
        }
        jobs = await cron_jobs(cron_server_url, job)
        assert [(j["schedule"], j["database"]) for j in jobs] == [("@hourly", "postgres")]
        for removed in (job, None):
            assert await cli("--database-url", postgres, "schedule", "--unschedule", "--json") == 0
            assert json.loads(capsys.readouterr().out) == {"removed": removed}
        assert await cron_jobs(cron_server_url, job) == []
