"""Dead letters for tests: rows written as the consumer writes them, queues drained, a terminal."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from consumer.deadletters import DeadLetter
from consumer.store import Store
from tests.harness import Bus, event

NOW = datetime.now(UTC)


def letter(  # noqa: PLR0913  # one parameter per column a test varies
    n: int,
    *,
    code: str = "unknown_task",
    task: uuid.UUID | None = None,
    body: bytes | None = None,
    routing_key: str = "history.agent_turn",
    failed_at: datetime | None = None,
    replay_count: int = 0,
) -> DeadLetter:
    """Dead letter number `n`, as the consumer writes it: message id `m<n>`."""
    raw = (
        body if body is not None else json.dumps(event(task or uuid.uuid4(), f"dead {n}")).encode()
    )
    return DeadLetter(
        message_id=f"m{n}",
        task_id=str(task) if task else None,
        routing_key=routing_key,
        code=code,
        detail=f"{code} for the test",
        failed_at=failed_at or NOW,
        replay_count=replay_count,
        headers={"x-error": code, "x-error-detail": f"{code} for the test", "app": "kept"},
        properties={"content_type": "application/json", "delivery_mode": 2, "user_id": "guest"},
        body=raw,
    )


async def bury(database_url: str, letters: Sequence[DeadLetter]) -> None:
    """Store dead letters as rows, as the consumer does, 10,000 per statement."""
    async with Store(database_url, max_connections=1) as store:
        for start in range(0, len(letters), 10_000):
            await store.write_batch([], letters[start : start + 10_000])


async def rows(sql: asyncpg.Connection) -> list[str]:
    """The message ids of the dead-letter rows, in id order."""
    found = await sql.fetch("SELECT message_id FROM task_build_history_dead_letters ORDER BY id")
    return [row["message_id"] for row in found]


async def taken_ids(bus: Bus, queue_name: str) -> list[str]:
    """The message ids of every message in `queue_name` now, taken from it.

    Consumed in bulk up to the count the queue gave, then fetched until it is empty; only the
    ids are kept, so tens of thousands of messages cost little memory.
    """
    channel = await bus.connection.channel()
    await channel.set_qos(prefetch_count=2000)
    queue = await channel.declare_queue(queue_name, passive=True)
    ready = queue.declaration_result.message_count or 0
    taken: list[str] = []
    if ready:
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                taken.append(str(message.message_id))
                if len(taken) == ready:
                    break
    await channel.close()  # anything delivered and not acked goes back, to be fetched below
    return taken + [str(message.message_id) for message in await bus.take_all(queue_name)]


async def bury_many(sql: asyncpg.Connection, count: int) -> None:
    """`count` unknown_task letters `m0`, `m1`, ..., made by the server: no memory here."""
    await sql.execute(
        """
        INSERT INTO task_build_history_dead_letters (message_id, error, detail, routing_key,
                                                     body, properties, headers)
        SELECT 'm' || n, 'unknown_task', 'unknown_task for the test', 'history.agent_turn',
               convert_to(json_build_object('task_id', gen_random_uuid(),
                                            'context_type', 'agent_turn',
                                            'content', 'dead ' || n)::text, 'UTF8'),
               '{"content_type": "application/json", "delivery_mode": 2}', '{"app": "kept"}'
        FROM generate_series(0, $1 - 1) AS n ORDER BY n
        """,
        count,
    )


class Screen:
    """What a program wrote to a terminal, read as it comes."""

    def __init__(self, terminal: int) -> None:
        """Read the terminal's side `terminal` without blocking."""
        os.set_blocking(terminal, False)
        self._terminal = terminal
        self.text = ""

    async def read(self) -> str:
        """Everything written so far."""
        while True:
            try:
                chunk = os.read(self._terminal, 4096)
            except OSError:  # nothing more yet (BlockingIOError), or the other side closed
                break
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return self.text
