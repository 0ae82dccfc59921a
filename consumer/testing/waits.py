"""Waits for other projects' tests: publish events, wait until they are stored, read them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Protocol, TypeVar
from uuid import UUID

from consumer.entries import HistoryEntry
from consumer.errors import HistoryNotSeenError
from consumer.events import parse_event
from consumer.publisher import (
    DEFAULT_EXCHANGE,
    EventLike,
    HistoryPublisher,
    prepare_events,
)
from consumer.testing.memory import InMemoryPublisher, as_uuid

T = TypeVar("T")

# How often the waits look again. They read by index; a test can afford twenty looks a second.
POLL_SECONDS = 0.05


class HistorySource(Protocol):
    """Where the waits read: a Store, or an InMemoryPublisher."""

    async def find_by_task(self, task_id: UUID) -> list[HistoryEntry]:
        """A task's entries, oldest first."""
        ...

    async def find_by_ids(self, ids: Collection[UUID]) -> list[HistoryEntry]:
        """The entries with these ids, oldest first."""
        ...

    async def received_by_tasks(self, task_ids: Collection[UUID]) -> dict[UUID, int]:
        """How many entries each task has been given, those the cap removed included."""
        ...


@asynccontextmanager
async def _opened(database: str | HistorySource) -> AsyncIterator[HistorySource]:
    """`database` itself, or a store opened on that URL for the block."""
    if not isinstance(database, str):
        yield database
        return
    # Imported here: a project that tests only against an InMemoryPublisher needs no driver.
    from consumer.store import Store  # noqa: PLC0415

    async with Store(database, max_connections=1) as store:
        yield store


async def read_history(database: str | HistorySource, task_id: UUID | str) -> list[HistoryEntry]:
    """A task's stored entries, oldest first (a database URL, a Store or an InMemoryPublisher)."""
    task = as_uuid(task_id)
    async with _opened(database) as source:
        return await source.find_by_task(task)


def _summary(entries: Sequence[HistoryEntry]) -> str:
    """What was seen, short enough for an assertion message."""
    shown = [f"{entry.context_type.value}: {entry.content[:40]!r}" for entry in entries[:5]]
    more = f", and {len(entries) - 5} more" if len(entries) > 5 else ""  # noqa: PLR2004
    return "[" + ", ".join(shown) + more + "]"


async def _until(
    look: Callable[[], Awaitable[T]], enough: Callable[[T], bool], *, within: float
) -> tuple[T, bool]:
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
    database: str | HistorySource,
    task_id: UUID | str,
    count: int,
    *,
    timeout: float = 10,  # noqa: ASYNC109  # the wait's failure message names it
) -> list[HistoryEntry]:
    """Wait until a task has at least `count` entries; return them, oldest first.

    Raises HistoryNotSeenError (an AssertionError) after `timeout` seconds, saying how many
    entries the task had and which. `task_id` may be a UUID or its text, as with the database.
    """
    task = as_uuid(task_id)
    async with _opened(database) as source:
        seen, done = await _until(
            lambda: source.find_by_task(task),
            lambda entries: len(entries) >= count,
            within=timeout,
        )
    if not done:
        raise HistoryNotSeenError(
            f"waited {timeout} s for {count} entries of task {task_id}; it has {len(seen)}:"
            f" {_summary(seen)}"
        )
    return seen


class _Arrivals:
    """Which of the published events are stored: found by id, or received and then trimmed."""

    def __init__(self, source: HistorySource, per_task: dict[UUID, set[UUID]]) -> None:
        self._source = source
        self._per_task = per_task
        self._before: dict[UUID, int] = {}
        self.entries: list[HistoryEntry] = []
        self.missing: set[UUID] = set()

    async def start(self) -> None:
        """Note how many entries each task had received before anything was published."""
        self._before = await self._source.received_by_tasks(self._per_task)

    async def look(self) -> bool:
        """Look once; whether every published event is stored."""
        wanted = set().union(*self._per_task.values())
        # The counts first: entries read after them hold at least what had arrived by then.
        received = await self._source.received_by_tasks(self._per_task)
        self.entries = await self._source.find_by_ids(wanted)
        found = {entry.id for entry in self.entries}
        self.missing = set()
        for task_id, ids in self._per_task.items():
            absent = ids - found
            # The cap removes a task's oldest entries in the statement that stores the new
            # ones, so an event can be stored and gone before any look. The task's count of
            # entries received tells: as many new arrivals as events published means all came.
            arrived = received.get(task_id, 0) - self._before.get(task_id, 0)
            if absent and arrived < len(ids):
                self.missing |= absent
        return not self.missing


async def publish_and_wait(
    events: Iterable[EventLike],
    *,
    database: str | HistorySource,
    amqp_url: str | None = None,
    exchange: str = DEFAULT_EXCHANGE,
    timeout: float = 10,  # noqa: ASYNC109  # the wait's failure message names it
) -> list[HistoryEntry]:
    """Publish events (validated, confirmed), then wait until every one is stored.

    Returns the stored entries still held, oldest first: an event counts as stored even when
    the cap (100 entries per task) removed it at once, and then it is not among them. With an
    InMemoryPublisher as `database`, the events are published to it and no `amqp_url` is
    needed. Raises HistoryNotSeenError after `timeout` seconds naming the events not stored.
    """
    prepared = prepare_events(events, now=datetime.now(UTC))
    per_task: dict[UUID, set[UUID]] = {}
    for outgoing in prepared:
        task_id = parse_event(outgoing.body, message_id=None, received_at=datetime.now(UTC)).task_id
        per_task.setdefault(task_id, set()).add(outgoing.id)
    async with _opened(database) as source:
        arrivals = _Arrivals(source, per_task)
        await arrivals.start()
        if isinstance(source, InMemoryPublisher):
            await source.publish_many(prepared)
        elif amqp_url is None:
            raise TypeError("publish_and_wait needs amqp_url, unless database is in memory")
        else:
            async with HistoryPublisher(amqp_url, exchange=exchange) as publisher:
                await publisher.publish_many(prepared)
        _, done = await _until(arrivals.look, bool, within=timeout)
    if not done:
        missing = sorted(str(event_id) for event_id in arrivals.missing)
        tasks = sum(1 for ids in per_task.values() if ids & arrivals.missing)
        raise HistoryNotSeenError(
            f"waited {timeout} s for {len(prepared)} published events to be stored;"
            f" {len(missing)}, of {tasks} task(s), are not: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")  # noqa: PLR2004
            + ". Is a consumer running on this broker and database? Events for a task that"
            " does not exist wait for it (TASK_HISTORY_UNKNOWN_TASK_RETRY_SECONDS) before"
            " being dead-lettered; invalid ones are dead-lettered: see `task-history dlq list`."
        )
    return arrivals.entries
