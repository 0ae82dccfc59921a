"""The batch pipeline: parse, validate, write entries and dead letters, bisect, then ack.

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
from consumer.deadletters import DeadLetter, dead_letter_of, read_dead_letter
from consumer.entries import NewEntry
from consumer.errors import (
    DataRejectedError,
    ErrorCode,
    InvalidEventError,
    StoreError,
    SystemicRefusalError,
    TaskHistoryError,
)
from consumer.events import check_retention, parse_event
from consumer.metrics import Metrics, metric_code
from consumer.retry import backoff
from consumer.settings import Settings
from consumer.shutdown import Shutdown
from consumer.topology import RoutingKeyCheck
from consumer.unknown_tasks import CREATE_MISSING_TASKS, create_task_hint

log = structlog.get_logger("consumer")

RETENTION_REFRESH_SECONDS = 30.0
# How many tasks the consumer remembers having logged the unknown-task hint for.
HINTED_TASKS = 10_000


class HistoryWriter(Protocol):
    """What the pipeline asks of the database."""

    async def limits(self) -> tuple[int, timedelta]:
        """The cap on entries per task, and the retention."""

    async def missing_tasks(self, task_ids: Collection[UUID]) -> set[UUID]:
        """Which of `task_ids` have no task row."""

    async def create_tasks(self, task_ids: Collection[UUID]) -> None:
        """Create the task rows that don't exist."""

    async def write_batch(
        self, entries: Sequence[NewEntry], dead_letters: Sequence[DeadLetter]
    ) -> set[UUID]:
        """Insert entries and dead letters in one transaction, in order; the new entry ids."""

    async def reconnect(self) -> None:
        """Use fresh connections from now on."""


class Outbox(Protocol):
    """What the pipeline asks of the broker, for messages it delivered."""

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
    # From the dead-letter queue (what the broker dead-lettered itself): stored as it is.
    transit: bool = False

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
    """A message to keep as a dead letter, and the letter."""

    delivery: Delivery
    letter: DeadLetter
    # For a row the database refused: why, without the row's values.
    refusal: str | None = None


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
        # Why the last batch had every row refused, when it had; None after a batch stores.
        self._last_refusal: str | None = None
        self._routing = RoutingKeyCheck()
        # Tasks whose waiting events were explained in the log: once each, not per message.
        self._hinted: dict[UUID, None] = {}

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
        """One attempt: sort the batch, write rows and dead letters, park retries, then ack."""
        now = datetime.now(UTC)
        triage = await self._sort(batch, now)
        write_started = asyncio.get_running_loop().time()
        stored_ids, refused = await self._write(triage, now)
        self._metrics.write_seconds.observe(asyncio.get_running_loop().time() - write_started)
        rejected = triage.rejected + refused
        await asyncio.gather(  # confirms overlap; the first failure is raised
            *(
                self._broker.retry_later(
                    d.message,
                    delay=self._settings.unknown_task_retry_delay_seconds,
                    since=since,
                    received_at=d.received_at,
                )
                for d, since in triage.waiting
            )
        )
        unacked = await self._broker.ack([d.message for d in batch])

        duplicates = len(triage.valid) - len(stored_ids) - len(refused)
        self._count(batch, triage, stored_ids, rejected, duplicates=duplicates)
        for r in rejected:
            log.warning(
                "dead-lettered",
                message_id=r.letter.message_id,
                code=r.letter.code,
                detail=r.letter.detail,
            )
        log.info(
            "batch",
            size=len(batch),
            stored=len(stored_ids),
            duplicates=duplicates,
            dead_lettered=len(rejected),
            waiting_for_task=len(triage.waiting),
            unacked=unacked,
            ms=round((asyncio.get_running_loop().time() - started) * 1000, 1),
        )

    async def _sort(self, batch: list[Delivery], now: datetime) -> Triage:
        """Parse and validate each message, then split off those whose task doesn't exist."""
        retention = await self._current_retention()
        triage = Triage(valid=[], waiting=[], rejected=[])
        for delivery in batch:
            if delivery.transit:
                triage.rejected.append(Rejected(delivery, read_dead_letter(delivery.message)))
                continue
            try:
                entry = delivery.parse()
                check_retention(entry, retention=retention, now=now)
            except InvalidEventError as exc:
                triage.rejected.append(_rejected(delivery, exc.code, exc.detail, now))
            else:
                triage.valid.append((delivery, entry))
        await self._hold_unknown_tasks(triage, now)
        return triage

    async def _hold_unknown_tasks(self, triage: Triage, now: datetime) -> None:
        """Move events whose task doesn't exist out of `valid`: to wait, or to dead-letter."""
        missing = await self._store.missing_tasks({entry.task_id for _, entry in triage.valid})
        if not missing:
            return
        if self._settings.create_missing_tasks:
            await self._store.create_tasks(missing)
            return
        window = self._settings.unknown_task_retry_seconds
        valid, triage.valid = triage.valid, []
        for delivery, entry in valid:
            if entry.task_id not in missing:
                triage.valid.append((delivery, entry))
                continue
            since = header_time(delivery.message, WAITING_SINCE) or now
            waited = (now - since).total_seconds()
            if waited >= window:
                detail = f"task_id: no task {entry.task_id} exists"
                if window:
                    detail += f" (retried for {round(waited)} s)"
                triage.rejected.append(
                    _rejected(delivery, ErrorCode.UNKNOWN_TASK, detail, now, task_id=entry.task_id)
                )
            else:
                triage.waiting.append((delivery, since))
                self._hint_unknown_task(entry.task_id, window)

    def _hint_unknown_task(self, task_id: UUID, window: float) -> None:
        """Log, once per task, that its events wait for it and how to create it."""
        if task_id in self._hinted:
            return
        if len(self._hinted) >= HINTED_TASKS:
            del self._hinted[next(iter(self._hinted))]  # the oldest: dicts keep their order
        self._hinted[task_id] = None
        log.warning(
            "events wait for a task that doesn't exist",
            task_id=str(task_id),
            waits_seconds=window,
            then="dead-lettered as unknown_task",
            create_it=create_task_hint(task_id),
            or_set=CREATE_MISSING_TASKS,
        )

    async def _write(self, triage: Triage, now: datetime) -> tuple[set[UUID], list[Rejected]]:
        """Write the entries and the dead letters in one transaction; bisect a refused row out.

        Returns the ids stored as new rows, and the rows the database refused (dead letters
        too, written with the others). A refusal of every row for one reason is not the rows'
        fault (a constraint or trigger added to the table): SystemicRefusalError, waited out.
        A batch of one can't tell: its row is dead-lettered, and the next lone row refused for
        the same reason is waited out.
        """
        letters = [r.letter for r in triage.rejected]
        entries = [entry for _, entry in triage.valid]
        try:
            stored = await self._store.write_batch(entries, letters)
        except DataRejectedError as exc:
            if not entries:
                raise
            stored, refused = await self._bisect(triage.valid, now, refusal=exc)
        else:
            if entries:
                self._last_refusal = None
            return stored, []
        reasons = {r.refusal for r in refused}
        whole = len(reasons) == 1 and len(refused) == len(entries)
        reason = reasons.pop() if whole else None
        if whole and (len(entries) > 1 or reason == self._last_refusal):
            raise SystemicRefusalError(
                f"the database refuses every row of the batch for the same reason; waiting as"
                f" for an outage: {reason}"
            )
        self._last_refusal = reason
        await self._store.write_batch([], letters + [r.letter for r in refused])
        return stored, refused

    async def _bisect(
        self,
        rows: list[tuple[Delivery, NewEntry]],
        now: datetime,
        *,
        refusal: DataRejectedError | None = None,
    ) -> tuple[set[UUID], list[Rejected]]:
        """Write `rows`, halving around the ones the database refuses; (stored ids, refused).

        `refusal` is the error `rows` as a whole already got. Halves are written in order, so
        arrival order holds; a refused row costs about 2 log2(batch) extra statements, never
        one statement per row.
        """
        if not rows:
            return set(), []
        if refusal is None:
            try:
                return await self._store.write_batch([entry for _, entry in rows], []), []
            except DataRejectedError as exc:
                refusal = exc
        if len(rows) == 1:
            delivery, entry = rows[0]
            detail = f"the database refused the row: {refusal}"
            code = ErrorCode.DATABASE_REJECTED
            rejected = _rejected(delivery, code, detail, now, task_id=entry.task_id)
            rejected.refusal = refusal.reason
            return set(), [rejected]
        middle = len(rows) // 2
        first_stored, first_refused = await self._bisect(rows[:middle], now)
        second_stored, second_refused = await self._bisect(rows[middle:], now)
        return first_stored | second_stored, first_refused + second_refused

    def _count(
        self,
        batch: list[Delivery],
        triage: Triage,
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
        metrics.waiting_for_task.inc(len(triage.waiting))
        for r in rejected:
            metrics.dead_lettered.labels(code=metric_code(r.letter.code)).inc()
        self._check_routing_keys(triage.valid)
        # One lag per stored row: a batch may hold the same event twice (a republish).
        created = {e.id: e.created_at for _, e in triage.valid if e.id in stored_ids}
        metrics.observe_lag(list(created.values()), now=datetime.now(UTC))

    def _check_routing_keys(self, valid: list[tuple[Delivery, NewEntry]]) -> None:
        """Count events whose routing key is not history.<context_type>; warn once per key.

        They are stored all the same: the body's context_type is what counts (RoutingKeyCheck).
        """
        mismatches = 0
        for delivery, entry in valid:
            if (found := self._routing.mismatch(delivery.message, entry.context_type)) is None:
                continue
            mismatches += 1
            key, expected = found
            if self._routing.first_sighting(key):
                log.warning(
                    "routing key does not match the event's context_type; stored by its"
                    " context_type (warned once per key)",
                    routing_key=key,
                    expected=expected,
                    message_id=delivery.message.message_id,
                )
        if mismatches:
            self._metrics.routing_key_mismatches.inc(mismatches)

    async def _current_retention(self) -> timedelta:
        """The retention setting, read again every half minute so a change applies soon."""
        now = asyncio.get_running_loop().time()
        if now - self._retention_read_at > RETENTION_REFRESH_SECONDS:
            _, self._retention = await self._store.limits()
            self._retention_read_at = now
        return self._retention


def _rejected(
    delivery: Delivery, code: ErrorCode, detail: str, now: datetime, *, task_id: UUID | None = None
) -> Rejected:
    """A message refused here, as the dead letter it becomes."""
    letter = dead_letter_of(
        delivery.message, code=code.value, detail=detail, failed_at=now, task_id=task_id
    )
    return Rejected(delivery, letter)
