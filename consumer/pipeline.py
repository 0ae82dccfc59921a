"""The batch pipeline: parse, validate, write, bisect, unknown tasks, dead-letter, then ack.

It sees the database and the broker only through the two ports below, so the decisions it
makes (which rows are stored, which messages dead-lettered or retried, when a batch is
acked, when a failure is waited out) run the same against in-memory fakes as against
PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID

import structlog

from consumer.broker.headers import RECEIVED_AT, WAITING_SINCE, MessageLike, header_time
from consumer.entries import NewEntry
from consumer.errors import (
    DataRejectedError,
    ErrorCode,
    InvalidEventError,
    StoreError,
    TaskHistoryError,
)
from consumer.events import check_retention, parse_event
from consumer.metrics import Metrics
from consumer.retry import backoff
from consumer.settings import Settings
from consumer.shutdown import Shutdown

log = structlog.get_logger("consumer")

RETENTION_REFRESH_SECONDS = 30.0


class HistoryWriter(Protocol):
    """What the pipeline asks of the database."""

    async def limits(self) -> tuple[int, timedelta]:
        """The cap on entries per task, and the retention."""

    async def missing_tasks(self, task_ids: Collection[UUID]) -> set[UUID]:
        """Which of `task_ids` have no task row."""

    async def create_tasks(self, task_ids: Collection[UUID]) -> None:
        """Create the task rows that don't exist."""

    async def insert_entries(self, entries: Sequence[NewEntry]) -> set[UUID]:
        """Insert in one statement, in order; the ids that were new."""

    async def reconnect(self) -> None:
        """Use fresh connections from now on."""


class Outbox(Protocol):
    """What the pipeline asks of the broker, for messages it delivered."""

    async def dead_letter(
        self, message: MessageLike, *, code: ErrorCode, detail: str, now: datetime
    ) -> None:
        """Publish a dead-letter copy with the error headers, confirmed."""

    async def retry_later(
        self, message: MessageLike, *, delay: float, since: datetime, received_at: datetime
    ) -> None:
        """Park a copy for `delay` seconds, confirmed."""

    async def ack(self, messages: Sequence[MessageLike]) -> int:
        """Ack messages; how many could not be acked (their channel closed)."""

    def holds_any(self, messages: Sequence[MessageLike]) -> bool:
        """Whether any of `messages` can still be acked."""


@dataclass(slots=True)
class Delivery:
    """A message as it arrived, and when; parsed once, however often its batch is retried.

    `received_at` is when the event was first received: a copy back from the retry queue
    carries that time in a header, read at parse time.
    """

    message: MessageLike
    received_at: datetime
    parsed: NewEntry | InvalidEventError | None = None

    def parse(self) -> NewEntry:
        """The message as a row, or InvalidEventError; an id generated here is kept for retries."""
        if self.parsed is None:
            self.parsed = self._parse()
        if isinstance(self.parsed, InvalidEventError):
            raise self.parsed
        return self.parsed

    def _parse(self) -> NewEntry | InvalidEventError:
        message = self.message
        self.received_at = header_time(message, RECEIVED_AT) or self.received_at
        try:
            return parse_event(
                message.body, message_id=message.message_id, received_at=self.received_at
            )
        except InvalidEventError as exc:
            return exc
        except Exception as exc:  # one odd message must not stop the others: it alone fails
            log.exception("event could not be validated", message_id=message.message_id)
            return InvalidEventError(
                ErrorCode.INVALID_EVENT, f"could not be validated: {type(exc).__name__}: {exc}"
            )


@dataclass(slots=True)
class Rejected:
    """A message to dead-letter, and why."""

    delivery: Delivery
    code: ErrorCode
    detail: str


@dataclass(slots=True)
class Triage:
    """A batch sorted by what becomes of each message: stored, retried later, dead-lettered."""

    valid: list[tuple[Delivery, NewEntry]]
    waiting: list[tuple[Delivery, datetime]]
    rejected: list[Rejected]


class Pipeline:
    """Writes batches of deliveries to the history and acks them, nothing lost on the way."""

    def __init__(
        self,
        *,
        store: HistoryWriter,
        broker: Outbox,
        settings: Settings,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> None:
        """Write through `store`, ack and dead-letter through `broker`; stop with `shutdown`."""
        self._store = store
        self._broker = broker
        self._settings = settings
        self._metrics = metrics
        self._shutdown = shutdown
        self._retention = timedelta(0)
        self._retention_read_at = float("-inf")

    async def handle(self, batch: list[Delivery]) -> None:
        """Write a batch and ack it, retrying until it works, its channel closes, or time is up.

        A failed attempt leaves the batch unacked, never nacked: on RabbitMQ 3.10 every nack
        counts toward the delivery limit. Errors whose class is not retryable propagate.
        """
        self._metrics.received.inc(len(batch))  # once a batch: a lock per message costs
        started = asyncio.get_running_loop().time()
        attempt = 0
        while True:
            try:
                await self._process(batch, started=started)
            except TaskHistoryError as exc:
                if not exc.retryable:
                    raise
                if not self._broker.holds_any([d.message for d in batch]):
                    log.warning(
                        "batch dropped: its channel closed, the broker redelivers it",
                        size=len(batch),
                    )
                    return
                attempt += 1
                self._metrics.batch_retries.inc()
                delay = backoff(attempt, cap=self._settings.retry_backoff_max_seconds)
                if self._shutdown.too_late(delay):
                    log.warning(
                        "shutdown timeout: batch left unacked, the broker redelivers it",
                        size=len(batch),
                        error=str(exc),
                    )
                    return
                log.warning(
                    "batch failed; retrying",
                    attempt=attempt,
                    retry_in=round(delay, 2),
                    size=len(batch),
                    error=str(exc),
                )
                if isinstance(exc, StoreError):
                    # Fresh connections next time: after a failover the old ones may still
                    # point at a server that went read-only.
                    await self._store.reconnect()
                await self._shutdown.pause(delay)
            else:
                return

    async def _process(self, batch: list[Delivery], *, started: float) -> None:
        """One attempt: sort the batch, write it, publish the copies, then ack every message."""
        now = datetime.now(UTC)
        sorted_out = await self._sort(batch, now)
        write_started = asyncio.get_running_loop().time()
        stored_ids, refused = await self._insert(sorted_out.valid)
        self._metrics.write_seconds.observe(asyncio.get_running_loop().time() - write_started)
        rejected = sorted_out.rejected + refused

        publishes = [
            self._broker.dead_letter(r.delivery.message, code=r.code, detail=r.detail, now=now)
            for r in rejected
        ]
        publishes += [
            self._broker.retry_later(
                d.message,
                delay=self._settings.unknown_task_retry_delay_seconds,
                since=since,
                received_at=d.received_at,
            )
            for d, since in sorted_out.waiting
        ]
        await asyncio.gather(*publishes)  # confirms overlap; the first failure is raised
        unacked = await self._broker.ack([d.message for d in batch])

        duplicates = len(sorted_out.valid) - len(stored_ids) - len(refused)
        self._count(batch, sorted_out, stored_ids, rejected, duplicates=duplicates)
        for r in rejected:
            log.warning(
                "dead-lettered",
                message_id=r.delivery.message.message_id,
                code=r.code.value,
                detail=r.detail,
            )
        log.info(
            "batch",
            size=len(batch),
            stored=len(stored_ids),
            duplicates=duplicates,
            dead_lettered=len(rejected),
            waiting_for_task=len(sorted_out.waiting),
            unacked=unacked,
            ms=round((asyncio.get_running_loop().time() - started) * 1000, 1),
        )

    async def _sort(self, batch: list[Delivery], now: datetime) -> Triage:
        """Parse and validate each message, then split off those whose task doesn't exist."""
        retention = await self._current_retention()
        rejected: list[Rejected] = []
        valid: list[tuple[Delivery, NewEntry]] = []
        for delivery in batch:
            try:
                entry = delivery.parse()
                check_retention(entry, retention=retention, now=now)
            except InvalidEventError as exc:
                rejected.append(Rejected(delivery, exc.code, exc.detail))
            else:
                valid.append((delivery, entry))
        sorted_out = Triage(valid=valid, waiting=[], rejected=rejected)
        missing = await self._store.missing_tasks({entry.task_id for _, entry in valid})
        if not missing:
            return sorted_out
        if self._settings.create_missing_tasks:
            await self._store.create_tasks(missing)
            return sorted_out
        window = self._settings.unknown_task_retry_seconds
        sorted_out.valid = []
        for delivery, entry in valid:
            if entry.task_id not in missing:
                sorted_out.valid.append((delivery, entry))
                continue
            since = header_time(delivery.message, WAITING_SINCE) or now
            waited = (now - since).total_seconds()
            if waited >= window:
                detail = f"task_id: no task {entry.task_id} exists"
                if window:
                    detail += f" (retried for {round(waited)} s)"
                rejected.append(Rejected(delivery, ErrorCode.UNKNOWN_TASK, detail))
            else:
                sorted_out.waiting.append((delivery, since))
        return sorted_out

    async def _insert(
        self, rows: list[tuple[Delivery, NewEntry]]
    ) -> tuple[set[UUID], list[Rejected]]:
        """Insert in one statement; if the database refuses a row, bisect to find which.

        Returns the ids stored as new rows, and the rows refused. Halves are written in order,
        so arrival order holds; a refused row costs about log2(batch) extra statements, never
        one statement per row.
        """
        if not rows:
            return set(), []
        try:
            return await self._store.insert_entries([entry for _, entry in rows]), []
        except DataRejectedError as exc:
            if len(rows) == 1:
                detail = f"the database refused the row: {exc}"
                return set(), [Rejected(rows[0][0], ErrorCode.DATABASE_REJECTED, detail)]
        middle = len(rows) // 2
        first_stored, first_refused = await self._insert(rows[:middle])
        second_stored, second_refused = await self._insert(rows[middle:])
        return first_stored | second_stored, first_refused + second_refused

    def _count(
        self,
        batch: list[Delivery],
        sorted_out: Triage,
        stored_ids: set[UUID],
        rejected: list[Rejected],
        *,
        duplicates: int,
    ) -> None:
        """Add a batch's outcome, acked just now, to the metrics."""
        metrics = self._metrics
        metrics.batch_size.observe(len(batch))
        metrics.stored.inc(len(stored_ids))
        metrics.duplicates.inc(duplicates)
        metrics.waiting_for_task.inc(len(sorted_out.waiting))
        for r in rejected:
            metrics.dead_lettered.labels(code=r.code.value).inc()
        # One lag per stored row: a batch may hold the same event twice (a republish).
        created = {e.id: e.created_at for _, e in sorted_out.valid if e.id in stored_ids}
        metrics.observe_lag(list(created.values()), now=datetime.now(UTC))

    async def _current_retention(self) -> timedelta:
        """The retention setting, read again every half minute so a change applies soon."""
        now = asyncio.get_running_loop().time()
        if now - self._retention_read_at > RETENTION_REFRESH_SECONDS:
            _, self._retention = await self._store.limits()
            self._retention_read_at = now
        return self._retention
