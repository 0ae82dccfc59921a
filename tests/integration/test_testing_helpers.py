"""consumer.testing against a running consumer: waits that count what the cap removed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from consumer.settings import Settings
from consumer.testing import publish_and_wait
from tests.harness import event, running
from tests.helpers import new_task


class TestPublishAndWaitPastTheCap:
    """More events for one task than it keeps: the wait still ends when all were stored."""

    async def test_one_hundred_and_fifty_events_on_one_task(
        self, settings: Settings, sql: asyncpg.Connection
    ) -> None:
        """All 150 are stored (the task received 150); the newest 100 are returned."""
        task = await new_task(sql)
        start = datetime.now(UTC) - timedelta(minutes=10)
        events = [
            event(task, f"n{n}", created_at=(start + timedelta(seconds=n)).isoformat())
            for n in range(150)
        ]
        async with running(settings):
            entries = await publish_and_wait(
                events,
                amqp_url=settings.amqp_url,
                database=settings.database_url,
                exchange=settings.exchange,
                timeout=30,
            )
        assert [entry.content for entry in entries] == [f"n{n}" for n in range(50, 150)]
        received = await sql.fetchval(
            "SELECT received FROM task_build_history_counts WHERE task_id = $1", task
        )
        assert received == 150
