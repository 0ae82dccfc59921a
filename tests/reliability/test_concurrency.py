"""Concurrency: 3 consumer processes and 4 SQL writers on the same 10 tasks keep the cap exact."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.conftest import Env
from tests.harness import Bus, count_dead_letters, event, replicas, stored_twice, wait_for
from tests.helpers import new_task
from tests.reliability.conftest import Figures

TASKS = 10
EVENTS = 6000  # through the consumers
WRITERS = 4
ROWS_PER_WRITER = 1000  # straight into the table, in statements of 1 to 40 rows


def consumed(logs: list[str]) -> int:
    """Messages the consumers have handled, from their JSON batch lines."""
    return sum(
        int(json.loads(line)["size"])
        for log in logs
        for line in log.splitlines()
        if line.startswith("{") and '"batch"' in line
    )


async def write_directly(
    url: str, rows: list[tuple[uuid.UUID, uuid.UUID, datetime]], rng: random.Random
) -> Counter[str]:
    """Insert (id, task, created_at) rows as another application would; count the errors."""
    errors: Counter[str] = Counter()
    connection = await asyncpg.connect(url)
    try:
        start = 0
        while start < len(rows):
            chunk = rows[start : start + rng.randint(1, 40)]
            start += len(chunk)
            try:
                await connection.execute(
                    "INSERT INTO task_build_history (id, task_id, context_type, content,"
                    " created_at) SELECT id, task_id, 'execution_step', 'sql ' || id, created_at"
                    " FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])"
                    " AS r (id, task_id, created_at)",
                    [row[0] for row in chunk],
                    [row[1] for row in chunk],
                    [row[2] for row in chunk],
                )
            except asyncpg.PostgresError as exc:
                errors[exc.sqlstate or type(exc).__name__] += 1
    finally:
        await connection.close()
    return errors


class TestConcurrentWriters:
    """Consumers and direct writers race on the same tasks; the database keeps it exact."""

    async def test_3_consumers_and_4_sql_writers_on_10_tasks(
        self, env: Env, figures: Figures
    ) -> None:
        """Every task ends at exactly 100, the newest; no deadlock, no serialization error."""
        rng = random.Random(20261126)
        tasks = [await new_task(env.sql) for _ in range(TASKS)]
        total = EVENTS + WRITERS * ROWS_PER_WRITER
        # Distinct times, dealt out shuffled: arrival order is not time order.
        start = datetime.now(UTC) - timedelta(hours=2)
        times = [start + timedelta(milliseconds=n) for n in range(total)]
        rng.shuffle(times)
        writes = [(uuid.uuid4(), tasks[n % TASKS], times[n]) for n in range(total)]
        by_events, by_sql = writes[:EVENTS], writes[EVENTS:]

        async with (
            replicas(env.settings, env.tmp_path, 3) as consumers,
            Bus(env.amqp_url, env.topology) as bus,
        ):
            writers = [
                asyncio.create_task(
                    write_directly(
                        env.database_url,
                        by_sql[n * ROWS_PER_WRITER : (n + 1) * ROWS_PER_WRITER],
                        random.Random(n),
                    )
                )
                for n in range(WRITERS)
            ]
            await bus.publish_many(
                event(task, f"event {entry}", id=str(entry), created_at=created.isoformat())
                for entry, task, created in by_events
            )
            writer_errors = await asyncio.gather(*writers)

            async def handled() -> int:
                return consumed([c.log() for c in consumers])

            await wait_for(
                handled,
                lambda n: n >= EVENTS,
                timeout=90,
                what="every event handled",
            )
            dead = await count_dead_letters(env.database_url)
        codes = [await consumer.exit_code() for consumer in consumers]
        logs = [consumer.log() for consumer in consumers]
        assert codes == [0, 0, 0], logs
        sql_errors: Counter[str] = sum(writer_errors, Counter())
        consumer_retries = sum(log.count("retrying") for log in logs)

        missing = wrong = 0
        for task in tasks:
            written = sorted(created for _, t, created in writes if t == task)
            kept = [
                row["created_at"]
                for row in await env.sql.fetch(
                    "SELECT created_at FROM task_build_history WHERE task_id = $1"
                    " ORDER BY created_at, seq",
                    task,
                )
            ]
            missing += len(set(written[-100:]) - set(kept))
            wrong += len(set(kept) - set(written[-100:]))
        figures.faults, figures.events = 0, total
        figures.lost, figures.dead_lettered_wrongly = missing, dead
        figures.duplicated = await stored_twice(env.sql)
        figures.note = (
            f"3 consumers + {WRITERS} SQL writers; deadlocks {sql_errors['40P01']},"
            f" serialization errors {sql_errors['40001']}, consumer retries {consumer_retries},"
            f" rows kept that are not among the newest 100: {wrong}"
        )
        assert all('"batch"' in log for log in logs), "a consumer got no share of the events"
        assert sql_errors == Counter(), sql_errors
        assert consumer_retries == 0, [
            line for log in logs for line in log.splitlines() if "retry" in line
        ]
        assert (missing, wrong, figures.duplicated, dead) == (0, 0, 0, 0)
        per_task = await env.sql.fetch(
            "SELECT count(*) AS n FROM task_build_history GROUP BY task_id"
        )
        assert sorted(row["n"] for row in per_task) == [100] * TASKS
        counters = await env.sql.fetch("SELECT entries FROM task_build_history_counts")
        assert sorted(row["entries"] for row in counters) == [100] * TASKS
