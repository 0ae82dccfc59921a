"""Helpers shared by the tests: tasks and rows written the way any SQL client would."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a private loop, leaving pytest-asyncio's loops alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def on_database(database_url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` on a connection of its own to `database_url`, from synchronous code."""

    async def connected() -> T:
        connection = await asyncpg.connect(database_url)
        try:
            return await work(connection)
        finally:
            await connection.close()

    return run_sync(connected())


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def breaking_on(marker: bytes, parse: Callable[..., T]) -> Callable[..., T]:
    """`parse`, but raising RuntimeError("parser bug") for a body that holds `marker`."""

    def parse_unless_marked(body: bytes, **kwargs: Any) -> T:  # noqa: ANN401  # passed through
        if marker in body:
            raise RuntimeError("parser bug")
        return parse(body, **kwargs)

    return parse_unless_marked


async def admin(url: str, *statements: str) -> None:
    """Run statements, one after the other, on the database at `url`."""
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def new_task(sql: asyncpg.Connection) -> uuid.UUID:
    """Create a task row and return its id."""
    task_id = uuid.uuid4()
    await sql.execute("INSERT INTO tasks (id) VALUES ($1)", task_id)
    return task_id


# One base for the whole run: two calls straddling a second boundary must not disagree.
_BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def at(seconds: float) -> datetime:
    """A fixed, recent point in time plus `seconds`."""
    return _BASE + timedelta(seconds=seconds)


async def insert_rows(
    sql: asyncpg.Connection,
    rows: Sequence[tuple[uuid.UUID, datetime]],
    *,
    content_prefix: str = "row",
) -> list[uuid.UUID]:
    """Insert (task, created_at) rows in one statement, in order; return their new ids."""
    ids = [uuid.uuid4() for _ in rows]
    await sql.execute(
        """
        INSERT INTO task_build_history (id, task_id, context_type, content, created_at)
        SELECT id, task_id, 'agent_turn', $4 || ' ' || n, created_at
        FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) WITH ORDINALITY
            AS r (id, task_id, created_at, n)
        ORDER BY n
        """,
        ids,
        [task for task, _ in rows],
        [created for _, created in rows],
        content_prefix,
    )
    return ids


async def kept_ids(sql: asyncpg.Connection, task_id: uuid.UUID) -> list[uuid.UUID]:
    """The ids a task still has, oldest first, expired or not."""
    records = await sql.fetch(
        "SELECT id FROM task_build_history WHERE task_id = $1 ORDER BY created_at, seq", task_id
    )
    return [record["id"] for record in records]
