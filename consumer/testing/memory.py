"""An in-memory stand-in for HistoryPublisher and the consumer behind it, for unit tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from consumer.entries import ContextType, HistoryEntry
from consumer.errors import ErrorCode, InvalidEventError
from consumer.events import check_retention, parse_event
from consumer.lifecycle import AsyncResource
from consumer.publisher import (
    DEFAULT_EXCHANGE,
    EventLike,
    OutgoingEvent,
    prepare_event,
    prepare_events,
)

DEFAULT_MAX_ENTRIES = 100
DEFAULT_RETENTION = timedelta(days=20)


def as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    """`value` as a UUID, as PostgreSQL reads a uuid parameter given as text; ValueError if not."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"not a UUID: {value!r}") from None


@dataclass(frozen=True, slots=True)
class Refusal:
    """An event the consumer would have dead-lettered: the event, its `x-error` code and why."""

    event: OutgoingEvent
    error: ErrorCode
    detail: str


class InMemoryPublisher(AsyncResource):
    """Publishes into memory what the consumer would store: no broker, no database.

    It has HistoryPublisher's methods (`publish`, `publish_many`, `async with`), refuses what
    HistoryPublisher refuses (InvalidEventError, before anything is recorded), and keeps the
    history the consumer would: an id stored once, the newest `max_entries_per_task` entries
    of each task, expired entries hidden. `published` lists every event sent, in order;
    `refused` those the consumer would dead-letter. The waits of `consumer.testing` accept it
    where they take a database:

        history = InMemoryPublisher()
        await my_agent.run(task_id, publisher=history)
        entries = await wait_for_entries(history, task_id, 3)

    With `tasks`, an event for any other task is refused as `unknown_task` at once (the
    consumer first waits `TASK_HISTORY_UNKNOWN_TASK_RETRY_SECONDS`); `create_missing_tasks`
    adds it instead, as `TASK_HISTORY_CREATE_MISSING_TASKS=true` does. Without `tasks`, every
    task exists.
    """

    def __init__(
        self,
        *,
        tasks: Iterable[uuid.UUID | str] | None = None,
        create_missing_tasks: bool = False,
        max_entries_per_task: int = DEFAULT_MAX_ENTRIES,
        retention: timedelta = DEFAULT_RETENTION,
        exchange: str = DEFAULT_EXCHANGE,
    ) -> None:
        """An empty history; `tasks`, when given, are the only tasks that exist."""
        if max_entries_per_task < 1:
            raise ValueError("max_entries_per_task must be at least 1")
        self.exchange_name = exchange
        self.max_entries_per_task = max_entries_per_task
        self.retention = retention
        self.create_missing_tasks = create_missing_tasks
        self.published: list[OutgoingEvent] = []
        self.refused: list[Refusal] = []
        self._tasks = None if tasks is None else {as_uuid(task) for task in tasks}
        self._entries: dict[uuid.UUID, list[tuple[HistoryEntry, int]]] = {}
        self._ids: set[uuid.UUID] = set()
        self._received: dict[uuid.UUID, int] = {}
        self._arrivals = 0

    async def _begin(self) -> None:
        """Nothing to connect to."""

    async def connect(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to close; what was recorded stays."""

    async def publish(self, event: EventLike | OutgoingEvent) -> uuid.UUID:
        """Validate an event as HistoryPublisher does, record it, and store it; return its id."""
        now = datetime.now(UTC)
        outgoing = event if isinstance(event, OutgoingEvent) else prepare_event(event, now=now)
        self.published.append(outgoing)
        self._consume(outgoing, now=now)
        return outgoing.id

    async def publish_many(
        self, events: Iterable[EventLike | OutgoingEvent], *, window: int | None = None
    ) -> list[uuid.UUID]:
        """Validate every event first (nothing is recorded if one is invalid), then publish each.

        `window` is accepted for HistoryPublisher's sake and means nothing here.
        """
        del window
        prepared = prepare_events(events, now=datetime.now(UTC))
        return [await self.publish(outgoing) for outgoing in prepared]

    def _consume(self, outgoing: OutgoingEvent, *, now: datetime) -> None:
        """What the consumer does with one message: refuse it, or store it once, within the cap."""
        entry = parse_event(outgoing.body, message_id=str(outgoing.id), received_at=now)
        try:
            check_retention(entry, retention=self.retention, now=now)
        except InvalidEventError as exc:
            self.refused.append(Refusal(outgoing, exc.code, exc.detail))
            return
        if self._tasks is not None and entry.task_id not in self._tasks:
            if not self.create_missing_tasks:
                detail = f"task {entry.task_id} does not exist"
                self.refused.append(Refusal(outgoing, ErrorCode.UNKNOWN_TASK, detail))
                return
            self._tasks.add(entry.task_id)
        if entry.id in self._ids:
            return
        self._ids.add(entry.id)
        self._arrivals += 1
        stored = HistoryEntry(
            id=entry.id,
            task_id=entry.task_id,
            workspace_id=entry.workspace_id,
            session_id=entry.session_id,
            context_type=ContextType(entry.context_type),
            content=entry.content,
            metadata=None if entry.metadata is None else json.loads(entry.metadata),
            created_at=entry.created_at,
            expires_at=entry.created_at + self.retention,
        )
        kept = self._entries.setdefault(entry.task_id, [])
        kept.append((stored, self._arrivals))
        kept.sort(key=lambda pair: (pair[0].created_at, pair[1]))
        del kept[: max(0, len(kept) - self.max_entries_per_task)]
        self._received[entry.task_id] = self._received.get(entry.task_id, 0) + 1

    def _visible(self, entries: Iterable[tuple[HistoryEntry, int]]) -> list[HistoryEntry]:
        now = datetime.now(UTC)
        return [entry for entry, _ in entries if entry.expires_at > now]

    async def find_by_task(self, task_id: uuid.UUID | str) -> list[HistoryEntry]:
        """A task's stored entries, oldest first, as Store.find_by_task returns them."""
        return self._visible(self._entries.get(as_uuid(task_id), []))

    async def find_by_ids(self, ids: Collection[uuid.UUID | str]) -> list[HistoryEntry]:
        """The stored entries with these ids, oldest first."""
        wanted = {as_uuid(event_id) for event_id in ids}
        found = [pair for kept in self._entries.values() for pair in kept if pair[0].id in wanted]
        found.sort(key=lambda pair: (pair[0].created_at, pair[1]))
        return self._visible(found)

    async def received_by_tasks(
        self, task_ids: Collection[uuid.UUID | str]
    ) -> dict[uuid.UUID, int]:
        """How many entries each task was ever given, the ones the cap removed included."""
        wanted = {as_uuid(task) for task in task_ids}
        return {task: self._received[task] for task in wanted if task in self._received}
