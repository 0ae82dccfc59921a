"""Helpers for other projects' integration tests: publish events, wait until they are stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from uuid import UUID

from consumer.entries import HistoryEntry
from consumer.errors import HistoryNotSeenError
from consumer.publisher import DEFAULT_EXCHANGE, EventLike, HistoryPublisher
from consumer.store import Store

__all__ = ["HistoryNotSeenError", "publish_and_wait", "read_history", "wait_for_entries"]

# How often the waits look again. They read by index; a test can afford twenty looks a second.
POLL_SECONDS = 0.05


@asynccontextmanager
async def _opened(database: str | Store) -> AsyncIterator[Store]:
    """`database` if it is a Store, else a store opened on that URL for the block."""
    if isinstance(database, Store):
        yield database
        return
    async with Store(database, max_connections=1) as store:
        yield store


async def read_history(database: str | Store, task_id: UUID) -> list[HistoryEntry]:
    """A task's stored entries, oldest first (a database URL or an open Store)."""
    async with _opened(database) as store:
        return await store.find_by_task(task_id)


def _summary(entries: Sequence[HistoryEntry]) -> str:
    """What was seen, short enough for an assertion message."""
    shown = [f"{entry.context_type.value}: {entry.content[:40]!r}" for entry in entries[:5]]
    more = f", and {len(entries) - 5} more" if len(entries) > 5 else ""  # noqa: PLR2004
    return "[" + ", ".join(shown) + more + "]"


async def _until(
    look: Callable[[], Awaitable[list[HistoryEntry]]],
    enough: Callable[[list[HistoryEntry]], bool],
    *,
    within: float,
) -> tuple[list[HistoryEntry], bool]:
    """Look until `enough` or `within` seconds; the last look, and whether it was enough."""
    deadline = time.monotonic() + within
    while True:
        seen = await look()
        if enough(seen):
            return seen, True
        if time.monotonic() >= deadline:
            return seen, False
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_entries(
    database: str | Store,
    task_id: UUID,
    count: int,
    *,
    timeout: float = 10,  # noqa: ASYNC109  # the wait's failure message names it
) -> list[HistoryEntry]:
    """Wait until a task has at least `count` entries; return them, oldest first.

    Raises HistoryNotSeenError (an AssertionError) after `timeout` seconds, saying how many
    entries the task had and which.
    """
    async with _opened(database) as store:
        seen, done = await _until(
            lambda: store.find_by_task(task_id),
            lambda entries: len(entries) >= count,
            within=timeout,
        )
    if not done:
        raise HistoryNotSeenError(
            f"waited {timeout} s for {count} entries of task {task_id}; it has {len(seen)}:"
            f" {_summary(seen)}"
        )
    return seen


async def publish_and_wait(
    events: Iterable[EventLike],
    *,
    amqp_url: str,
    database: str | Store,
    exchange: str = DEFAULT_EXCHANGE,
    timeout: float = 10,  # noqa: ASYNC109  # the wait's failure message names it
) -> list[HistoryEntry]:
    """Publish events (validated, confirmed), then wait until every one is stored.

    Returns the stored entries, oldest first. Raises HistoryNotSeenError after `timeout`
    seconds naming the events still missing: a consumer that isn't running, an unknown task
    waiting for its retry, or an event dead-lettered (see `task-history dlq list`).
    """
    async with HistoryPublisher(amqp_url, exchange=exchange) as publisher:
        ids = await publisher.publish_many(events)
    wanted = set(ids)
    async with _opened(database) as store:
        seen, done = await _until(
            lambda: store.find_by_ids(wanted),
            lambda entries: {entry.id for entry in entries} >= wanted,
            within=timeout,
        )
    if not done:
        missing = sorted(str(event_id) for event_id in wanted - {entry.id for entry in seen})
        raise HistoryNotSeenError(
            f"waited {timeout} s for {len(wanted)} published events to be stored;"
            f" {len(missing)} are not: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")  # noqa: PLR2004
        )
    return seen
