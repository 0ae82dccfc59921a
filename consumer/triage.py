"""What becomes of each message of a batch: a row, a retry later, or a dead letter. No I/O.

The pipeline asks the database and the broker; the decisions are made here, one message at a
time, so that whatever one message carries can fail only that message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from consumer.deadletters import DeadLetter, bare_letter, dead_letter_of, transit_letter
from consumer.entries import NewEntry
from consumer.errors import ErrorCode, InvalidEventError
from consumer.events import check_retention, parse_event
from consumer.incoming import Incoming
from consumer.rules import MAX_BODY_BYTES


@dataclass(slots=True)
class Delivery:
    """A message in the consumer's hands, parsed once however often its batch is tried."""

    message: Incoming
    parsed: NewEntry | InvalidEventError | None = None

    @property
    def received_at(self) -> datetime:
        """When the event was first received (a retried copy says so, signed)."""
        return self.message.received_at

    def parse(self) -> NewEntry:
        """The message as a row, or InvalidEventError; an id generated here is kept for retries."""
        if self.parsed is None:
            self.parsed = self._parse()
        if isinstance(self.parsed, InvalidEventError):
            raise self.parsed
        return self.parsed

    def _parse(self) -> NewEntry | InvalidEventError:
        message = self.message
        if not message.body.whole:  # never kept whole: over the limit, as parse_event says
            return too_large(message.body.size)
        try:
            return parse_event(
                message.body.data, message_id=message.message_id, received_at=self.received_at
            )
        except InvalidEventError as exc:
            return exc


@dataclass(slots=True)
class Rejected:
    """A message to keep as a dead letter, and the letter."""

    delivery: Delivery
    letter: DeadLetter


@dataclass(slots=True)
class Parked:
    """A message to send round the retry queue, and the window it is in."""

    delivery: Delivery
    # Since when its task has been missing, or since when the database has refused its row.
    waiting_since: datetime | None = None
    refused_since: datetime | None = None


@dataclass(slots=True)
class Triage:
    """A batch sorted by what becomes of each message: stored, retried later, dead-lettered."""

    valid: list[tuple[Delivery, NewEntry]] = field(default_factory=list)
    parked: list[Parked] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What became of the messages of a batch that were settled (stored, parked or buried)."""

    settled: list[Delivery] = field(default_factory=list)
    stored: set[UUID] = field(default_factory=set)
    valid: list[tuple[Delivery, NewEntry]] = field(default_factory=list)
    parked: list[Parked] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    # How many of `rejected` are written, and which of `parked` the broker has confirmed: what
    # follows the commit is retried apart from it, and never does the same thing twice.
    letters_written: int = 0
    sent: set[int] = field(default_factory=set)
    # When the batch was sorted: the time its decisions were taken at.
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def finished(self) -> bool:
        """Whether every parked message is sent and every dead letter written."""
        return self.letters_written == len(self.rejected) and all(
            id(p) in self.sent for p in self.parked
        )

    def add(self, other: Outcome) -> None:
        """Take in the outcome of another part of the batch (each part finished)."""
        self.settled += other.settled
        self.stored |= other.stored
        self.valid += other.valid
        self.parked += other.parked
        self.rejected += other.rejected
        self.letters_written += other.letters_written
        self.sent |= other.sent


def too_large(size: int) -> InvalidEventError:
    """The reason a body over the limit is refused unread, as parse_event words it."""
    return InvalidEventError(
        ErrorCode.TOO_LARGE, f"body is {size} bytes, over the {MAX_BODY_BYTES}-byte limit"
    )


def first_look(delivery: Delivery, *, now: datetime, retention: timedelta) -> NewEntry | Rejected:
    """A valid entry, or the dead letter the message is: unread, undecodable, invalid, expired.

    Whether the entry's task exists is not known here (see `unknown_task`).
    """
    message = delivery.message
    if message.transit:
        return Rejected(delivery, transit_letter(message, now=now))
    if message.decode_error is not None:
        return internal_error(delivery, f"could not be decoded: {message.decode_error}", now)
    if message.unreadable:
        detail = "the AMQP properties could not be read: " + "; ".join(message.unreadable)
        return rejected(delivery, ErrorCode.INVALID_PROPERTIES, detail, now)
    try:
        entry = delivery.parse()
        check_retention(entry, retention=retention, now=now)
    except InvalidEventError as exc:
        return rejected(delivery, exc.code, exc.detail, now)
    return entry


def unknown_task(
    delivery: Delivery, entry: NewEntry, *, now: datetime, window: float
) -> Parked | Rejected:
    """An event whose task doesn't exist: parked while in its window, then a dead letter."""
    since = delivery.message.waiting_since or now
    waited = (now - since).total_seconds()
    if waited < window:
        return Parked(delivery, waiting_since=since)
    detail = f"task_id: no task {entry.task_id} exists"
    if window:
        detail += f" (retried for {round(waited)} s, {_times(delivery.message.retry_count)})"
    return rejected(delivery, ErrorCode.UNKNOWN_TASK, detail, now, task_id=entry.task_id)


def refused_row(  # the row, the refusal, and the window it is judged by
    delivery: Delivery, entry: NewEntry, refusal: str, *, now: datetime, window: float
) -> Parked | Rejected:
    """A row the database refused: parked while in its window, then a dead letter with why."""
    since = delivery.message.refused_since or now
    waited = (now - since).total_seconds()
    if waited < window:
        return Parked(delivery, refused_since=since)
    detail = f"the database refused the row: {refusal}"
    if window:
        detail += f" (retried for {round(waited)} s, {_times(delivery.message.retry_count)})"
    return rejected(delivery, ErrorCode.DATABASE_REJECTED, detail, now, task_id=entry.task_id)


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def rejected(
    delivery: Delivery,
    code: ErrorCode,
    detail: str,
    now: datetime,
    *,
    task_id: UUID | None = None,
) -> Rejected:
    """A message refused here, as the dead letter it becomes."""
    letter = dead_letter_of(
        delivery.message, code=code.value, detail=detail, failed_at=now, task_id=task_id
    )
    return Rejected(delivery, letter)


def internal_error(delivery: Delivery, detail: str, now: datetime) -> Rejected:
    """A message the consumer failed on unexpectedly: a dead letter with only what is certain."""
    letter = bare_letter(
        delivery.message, code=ErrorCode.INTERNAL_ERROR.value, detail=detail, failed_at=now
    )
    return Rejected(delivery, letter)


def failure(exc: BaseException) -> str:
    """An unexpected exception as a dead letter's detail: its type and message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
