"""What the benchmarks share: where the servers are, scratch databases, events, the report."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from consumer.entries import ContextType, NewEntry
from consumer.store import Store
from tests.helpers import admin, with_database

LOCAL_DATABASE = "postgresql://postgres@localhost:5432/postgres"
LOCAL_AMQP = "amqp://guest:guest@localhost:5672/"
CONTEXT_TYPES = [c.value for c in ContextType]


def database_server() -> str:
    """The PostgreSQL server to benchmark on."""
    for name in ("TASK_HISTORY_BENCH_DATABASE_URL", "TASK_HISTORY_TEST_DATABASE_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return LOCAL_DATABASE


def amqp_server() -> str:
    """The RabbitMQ to benchmark on."""
    for name in ("TASK_HISTORY_BENCH_AMQP_URL", "TASK_HISTORY_TEST_AMQP_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return LOCAL_AMQP


@contextlib.asynccontextmanager
async def scratch_database(prefix: str) -> AsyncIterator[str]:
    """A new empty database, dropped on the way out; yields its URL."""
    server = database_server()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await admin(server, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        await admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def content(rng: random.Random) -> str:
    """Text the size agents send: median about 250 characters, a long tail up to 8,000."""
    return "x" * max(1, min(8000, int(rng.lognormvariate(5.5, 1.0))))


def metadata(rng: random.Random, n: int) -> str | None:
    """Small JSON metadata on half the events."""
    if rng.random() < 0.5:
        return json.dumps({"tool": "pytest", "exit_code": rng.randint(0, 2), "n": n})
    return None


def machine() -> str:
    """A line saying where the figures come from."""
    return f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def now_iso() -> str:
    """The time now, for the result file."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def report(result: dict[str, object], lines: list[str], json_path: Path | None) -> None:
    """Print the table's lines, and write `result` as JSON when a path is given."""
    for line in lines:
        print(line)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


async def fill_to_cap(database_url: str, tasks: list[uuid.UUID]) -> None:
    """Migrate and put every task at the cap, so that every batch trims."""
    async with Store(database_url, max_connections=1) as store:
        await store.migrate()
        await store.create_tasks(tasks)
        start = datetime.now(UTC) - timedelta(hours=1)
        fill = [
            NewEntry(uuid.uuid4(), task, None, None, "agent_turn", "x" * 200, None, start)
            for task in tasks
            for _ in range(100)
        ]
        for k in range(0, len(fill), 5000):
            await store.insert_entries(fill[k : k + 5000])


WARM_UP_BATCHES = 3  # the first batches warm caches and plans; they are not timed


async def time_alternately(stores: Sequence[Store], work: Sequence[list[NewEntry]]) -> list[float]:
    """Seconds each store spent inserting `work`, batch by batch in turn, so noise falls alike."""
    seconds = [0.0] * len(stores)
    for n, batch in enumerate(work):
        for k, store in enumerate(stores):
            started = time.perf_counter()
            await store.insert_entries(batch)
            if n >= WARM_UP_BATCHES:
                seconds[k] += time.perf_counter() - started
    return seconds
