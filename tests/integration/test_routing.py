"""Routing keys on the real broker: the body's context_type is stored, a wrong key only noted."""

from __future__ import annotations

import uuid

import asyncpg
import structlog

from consumer.settings import Settings
from consumer.topology import Topology
from tests.harness import Bus, count_dead_letters, count_rows, event, running, wait_for
from tests.helpers import new_task

WARNING = "routing key does not match the event's context_type"


class TestRoutingKeys:
    """Events published with a key that disagrees with their context_type."""

    async def test_history_and_not_a_type_are_stored_counted_and_warned_once(
        self, settings: Settings, amqp_url: str, topology: Topology, sql: asyncpg.Connection
    ) -> None:
        """Keys `history` and `history.not_a_type` reach the queue; each event is stored."""
        task = await new_task(sql)
        published = [
            ("history", "chat_message"),
            ("history.not_a_type", "error"),
            ("history", "status_change"),
            ("history.not_a_type", "error"),
            ("history.agent_turn", "agent_turn"),
        ]
        ids = [uuid.uuid4() for _ in published]
        with structlog.testing.capture_logs() as logs:
            async with Bus(amqp_url, topology) as bus, running(settings) as worker:
                for event_id, (key, kind) in zip(ids, published, strict=True):
                    body = event(task, f"{kind} via {key}", id=str(event_id), context_type=kind)
                    await bus.publish(body, routing_key=key)
                await wait_for(
                    lambda: count_rows(settings.database_url), lambda n: n == len(published)
                )
                mismatches = worker.metrics.registry.get_sample_value(
                    "task_history_routing_key_mismatches_total"
                )
        rows = await sql.fetch("SELECT id, context_type FROM task_build_history")
        assert {row["id"]: row["context_type"] for row in rows} == {
            event_id: kind for event_id, (_, kind) in zip(ids, published, strict=True)
        }
        assert await count_dead_letters(settings.database_url) == 0
        assert mismatches == 4
        warnings = [line for line in logs if line["event"].startswith(WARNING)]
        assert sorted((w["routing_key"], w["expected"]) for w in warnings) == [
            ("history", "history.chat_message"),
            ("history.not_a_type", "history.error"),
        ]
