"""`task-history demo`: simulated agents publishing the real way, stored by the consumer."""

from __future__ import annotations

import asyncpg

from consumer.settings import Settings
from tests.harness import run_command, running, settings_environment, wait_for


class TestDemo:
    """The demo's stream is valid and lands in the table."""

    async def test_count_events_stored(self, settings: Settings, sql: asyncpg.Connection) -> None:
        """`demo --count 40` publishes 40 events of tasks it created; the consumer stores all."""
        async with running(settings):
            code, out, err = await run_command(
                *("demo", "--agents", "2", "--rate", "200", "--count", "40"),
                environment=settings_environment(settings),
            )
            assert code == 0, err
            await wait_for(
                lambda: sql.fetchval("SELECT count(*) FROM task_build_history"),
                lambda n: n == 40,
                what="40 demo events stored",
            )
        assert out == "published 40 events\n"
        kinds = await sql.fetchval("SELECT count(DISTINCT context_type) FROM task_build_history")
        assert kinds >= 3
