"""The batch pipeline: sort, write entries and dead letters, bisect, park, then ack.

It sees the database and the broker only through the two ports below, and messages only as
typed deliveries (consumer.incoming), so the decisions it makes (which rows are stored, which
messages dead-lettered or retried, when a batch is acked, when a failure is waited out) run the
same against in-memory fakes as against PostgreSQL and RabbitMQ. The decisions about one
message are consumer.triage's; what can fail is kept to that message.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar
from uuid import UUID

import structlog

from consumer import tracing
from consumer.bookkeeping import Bookkeeping
from consumer.deadletters import DeadLetter, letter_row, one_line
from consumer.entries import NewEntry
from consumer.errors import (
    ConcurrencyConflictError,
    DatabaseUnavailableError,
    DataRejectedError,
    ErrorCode,
    StoreError,
    TaskHistoryError,
)
from consumer.incoming import Incoming
from consumer.metrics import Metrics
from consumer.retry import backoff
from consumer.settings import Settings
from consumer.shutdown import Shutdown
from consumer.triage import (
    Delivery,
    Outcome,
    Parked,
    Rejected,
    Triage,
    failure,
    first_look,
    internal_error,
    refused_row,
    unknown_task,
)

log = structlog.get_logger("consumer")

RETENTION_REFRESH_SECONDS = 30.0
# While the database can't be reached, how often a batch waiting to be retried asks it.
PROBE_INTERVAL = 0.5

__all__ = ["Delivery", "HistoryWriter", "Outbox", "Pipeline"]

T = TypeVar("T")


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

    async def ping(self, *, within: float = 2) -> None:
        """Raise DatabaseUnavailableError unless the database answers within `within` seconds."""


class Outbox(Protocol):
    """What the pipeline asks of the broker, for messages it delivered."""

    async def retry_later(
        self,
        message: Incoming,
        *,
        delay: float,
        waiting_since: datetime | None = None,
        refused_since: datetime | None = None,
    ) -> None:
        """Park a copy for `delay` seconds, confirmed, its window written in signed headers."""

    async def ack(self, messages: Sequence[Incoming]) -> int:
        """Ack messages; how many could not be acked (their channel closed)."""

    def holds_any(self, messages: Sequence[Incoming]) -> bool:
        """Whether any of `messages` can still be acked."""


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
        self._books = Bookkeeping(metrics, log_every=settings.batch_log_seconds)
        # Why the database refuses writes that are not any row's fault (a revoked grant), while
        # it does; None once a write goes through. /readyz and a gauge show it.
        self.refusal: str | None = None

    @property
    def retention(self) -> timedelta:
        """The retention as last read from the database (0 before the first batch)."""
        return self._retention

    async def handle(self, batch: list[Delivery]) -> None:
        """Write a batch and ack it, retrying until it works, its channel closes, or time is up.

        A failed attempt leaves the batch unacked, never nacked: on RabbitMQ 3.10 every nack
        counts toward the delivery limit. An unexpected error is narrowed down to the message
        it comes from, which becomes an `internal_error` dead letter; an error of the process
        itself (a client used while closed) propagates.
        """
        self._metrics.received.inc(len(batch))  # once a batch: a lock per message costs
        started = asyncio.get_running_loop().time()
        with tracing.batch_span([delivery.message.headers for delivery in batch]):
            outcome = await self._settle(batch)
            if not outcome.settled:
                return
            unacked = await self._broker.ack([d.message for d in outcome.settled])
        try:
            self._books.report(outcome, unacked=unacked, started=started)
        except Exception:  # the batch is acked: counting it must not undo that
            log.exception("batch bookkeeping failed")

    def close(self) -> None:
        """Log what is left of the batches' summary: the pipeline handles no more batches."""
        self._books.flush()

    async def _settle(self, batch: list[Delivery]) -> Outcome:
        """Store, park or bury every message of `batch`; what could not be is left out."""
        try:
            return await self._with_retries(batch)
        except TaskHistoryError:
            raise
        except Exception as exc:  # a bug that something in this batch sets off
            if len(batch) > 1:
                middle = len(batch) // 2
                outcome = await self._settle(batch[:middle])
                outcome.add(await self._settle(batch[middle:]))
                return outcome
            (delivery,) = batch
            log.exception(
                "internal error on one message; it becomes a dead letter",
                message_id=delivery.message.message_id,
            )
            return await self._bury(delivery, exc)

    async def _bury(self, delivery: Delivery, exc: Exception) -> Outcome:
        """The last resort for one message: an `internal_error` dead letter of it, and no more."""
        burial = internal_error(delivery, failure(exc), datetime.now(UTC))
        outcome = Outcome(settled=[delivery], rejected=[burial])
        return await self._retrying([delivery], lambda _held: self._finish(outcome)) or Outcome()

    async def _with_retries(self, batch: list[Delivery]) -> Outcome:
        """Write the batch, then park and bury what the write left: each step retried alone.

        A failure after the commit (a retry copy the broker did not confirm, a dead letter the
        database refused) never runs the write again: its rows are committed, and a second
        write would only make copies for the ledger to turn away.
        """
        outcome = await self._retrying(batch, self._attempt)
        if outcome is None or outcome.finished:
            return outcome or Outcome()
        # Not acked unless finished: a parked message not yet in the retry queue would be lost.
        return await self._retrying(outcome.settled, lambda _held: self._finish(outcome)) or (
            Outcome()
        )

    async def _retrying(
        self, batch: list[Delivery], attempt: Callable[[list[Delivery]], Awaitable[T | None]]
    ) -> T | None:
        """Run `attempt` on what is still held of `batch` until it works; None if it can't.

        Waits out what the servers refuse for a while. Gives up (None) once none of `batch` can
        be acked any more (its channel closed: the broker has the messages again, perhaps
        already in another consumer's hands), when `attempt` says so, or at the shutdown
        deadline.
        """
        failures = 0
        while True:
            held = [d for d in batch if self._broker.holds_any([d.message])]
            try:
                outcome = await attempt(held) if held else None
                if outcome is None:
                    log.warning(
                        "batch dropped: its channel closed, the broker redelivers it",
                        size=len(batch),
                    )
                    return None
            except TaskHistoryError as exc:
                if not exc.retryable:
                    raise
                failures += 1
                self._metrics.batch_retries.inc()
                delay = backoff(failures, cap=self._settings.retry_backoff_max_seconds)
                if self._shutdown.too_late(delay):
                    log.warning(
                        "shutdown timeout: batch left unacked, the broker redelivers it",
                        size=len(batch),
                        error=str(exc),
                    )
                    return None
                self._note_failure(exc, attempt=failures, delay=delay, size=len(batch))
                if isinstance(exc, StoreError):
                    # Fresh connections next time: after a failover the old ones may still
                    # point at a server that went read-only.
                    await self._store.reconnect()
                if isinstance(exc, DatabaseUnavailableError):
                    await self._until_database_answers(within=delay)
                else:
                    await self._shutdown.pause(delay)
            else:
                self._accepted()
                return outcome

    async def _until_database_answers(self, *, within: float) -> None:
        """Wait `within` seconds at most, asking the database every PROBE_INTERVAL.

        A batch retried only after its full backoff would sit in hand for up to the backoff's
        cap after the database came back; a probe lets it go as soon as the database answers.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (left := deadline - loop.time()) > 0:
            await self._shutdown.pause(min(PROBE_INTERVAL, left))
            try:
                await self._store.ping(within=PROBE_INTERVAL)
            except TaskHistoryError:
                continue
            return

    def _note_failure(
        self, exc: TaskHistoryError, *, attempt: int, delay: float, size: int
    ) -> None:
        """Log a failed attempt: each one of an outage; a refusal once, until it changes."""
        if _is_refusal(exc):
            reason = str(exc)
            self._metrics.database_refusing.set(1)
            if reason != self.refusal:
                log.warning(
                    "the database refuses the writes; waiting until it accepts them",
                    error=reason,
                    retry_in=round(delay, 2),
                )
            else:
                log.debug("the database still refuses the writes", attempt=attempt, error=reason)
            self.refusal = reason
            return
        log.warning(
            "batch failed; retrying",
            attempt=attempt,
            retry_in=round(delay, 2),
            size=size,
            error=str(exc),
        )

    def _accepted(self) -> None:
        if self.refusal is not None:
            log.info("the database accepts the writes again", was=self.refusal)
            self.refusal = None
            self._metrics.database_refusing.set(0)

    async def _attempt(self, batch: list[Delivery]) -> Outcome | None:
        """Sort and write: rows, and the dead letters known so far, in one commit if it can.

        None, with nothing written, if the batch's channel closed meanwhile.
        """
        now = datetime.now(UTC)
        triage = await self._sort(batch, now)
        # Asked before the write, not only after a failure: a delivery whose channel closed is
        # the broker's again, maybe in another consumer's hands, and writing it makes a copy.
        if not self._broker.holds_any([d.message for d in batch]):
            return None
        write_started = asyncio.get_running_loop().time()
        stored, refused, letters_written = await self._write(triage)
        self._metrics.write_seconds.observe(asyncio.get_running_loop().time() - write_started)
        window = self._settings.refused_row_retry_seconds
        for delivery, entry, reason in refused:
            decided = refused_row(delivery, entry, reason, now=now, window=window)
            if isinstance(decided, Parked):
                triage.parked.append(decided)
                self._books.warn_once(
                    "refused", "the database refuses rows; they wait", error=reason
                )
            else:
                triage.rejected.append(decided)
        refused_ids = {id(delivery) for delivery, _, _ in refused}
        triage.valid = [(d, e) for d, e in triage.valid if id(d) not in refused_ids]
        return Outcome(
            settled=list(batch),
            stored=stored,
            valid=triage.valid,
            parked=triage.parked,
            rejected=triage.rejected,
            letters_written=letters_written,
            now=now,
        )

    async def _finish(self, outcome: Outcome) -> Outcome:
        """Send the parked messages not sent yet, then write the dead letters not written yet.

        Run again after a failure, it sends and writes only what is left: a copy confirmed once
        is never sent again, and no dead letter written twice.
        """
        await self._park(outcome)
        unwritten = outcome.rejected[outcome.letters_written :]
        if unwritten:
            await self._write_letters([r.letter for r in unwritten])
            outcome.letters_written = len(outcome.rejected)
        return outcome

    async def _sort(self, batch: list[Delivery], now: datetime) -> Triage:
        """Each message to a valid entry or a dead letter, then entries of unknown tasks parked."""
        retention = await self._current_retention()
        triage = Triage()
        for delivery in batch:
            try:
                found = first_look(delivery, now=now, retention=retention)
            except Exception as exc:  # one odd message must not stop the others: it alone fails
                log.exception(
                    "message could not be handled", message_id=delivery.message.message_id
                )
                found = internal_error(delivery, failure(exc), now)
            if isinstance(found, Rejected):
                triage.rejected.append(_storable(found))
            else:
                triage.valid.append((delivery, found))
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
            decided = unknown_task(delivery, entry, now=now, window=window)
            if isinstance(decided, Parked):
                triage.parked.append(decided)
                self._books.hint_unknown_task(entry.task_id, window)
            else:
                triage.rejected.append(_storable(decided))

    async def _write(
        self, triage: Triage
    ) -> tuple[set[UUID], list[tuple[Delivery, NewEntry, str]], int]:
        """Write the entries, and the dead letters with them when it can; bisect refused rows.

        Returns the ids stored as new rows, the rows the database refused (with why, without
        their values), and how many of `triage.rejected` were written. Without a refusal that
        is one transaction for both; with one, the rows are bisected alone and the dead letters
        left for the caller to write once, with any the refusals add.
        """
        letters = [r.letter for r in triage.rejected]
        entries = [entry for _, entry in triage.valid]
        if not entries:
            return set(), [], 0
        try:
            with tracing.span("task_build_history write", rows=len(entries), letters=len(letters)):
                stored = await self._store.write_batch(entries, letters)
        except DataRejectedError as exc:
            stored, refused = await self._bisect(triage.valid, refusal=exc)
            return stored, refused, 0
        return stored, [], len(letters)

    async def _bisect(
        self,
        rows: list[tuple[Delivery, NewEntry]],
        *,
        refusal: DataRejectedError | None = None,
    ) -> tuple[set[UUID], list[tuple[Delivery, NewEntry, str]]]:
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
            return set(), [(delivery, entry, refusal.reason)]
        middle = len(rows) // 2
        first_stored, first_refused = await self._bisect(rows[:middle])
        second_stored, second_refused = await self._bisect(rows[middle:])
        return first_stored | second_stored, first_refused + second_refused

    async def _write_letters(self, letters: list[DeadLetter]) -> None:
        """Write dead letters alone; any the database refuses are kept without headers.

        If even those are refused, the refusal is not the letters' (a revoked grant): a
        StoreError, waited out like an outage.
        """
        try:
            await self._store.write_batch([], letters)
        except DataRejectedError as exc:
            if all(not letter.headers and not letter.properties for letter in letters):
                raise StoreError(f"the database refuses dead letters: {exc}") from exc
            log.warning("dead letters refused; kept without headers and properties", error=str(exc))
            await self._write_letters([_stripped(letter, exc) for letter in letters])

    async def _park(self, outcome: Outcome) -> None:
        """Send the parked messages not yet confirmed round the retry queue, together.

        Each publish runs to its confirm or its failure before anything is decided, so none is
        left running while the step is tried again; those confirmed are noted and never sent
        again. A broker failure (retryable) is raised once all have ended; any other error
        makes its message a dead letter instead.
        """
        pending = [p for p in outcome.parked if id(p) not in outcome.sent]
        if not pending:
            return
        results = await asyncio.gather(
            *(
                self._broker.retry_later(
                    p.delivery.message,
                    delay=self._settings.unknown_task_retry_delay_seconds,
                    waiting_since=p.waiting_since,
                    refused_since=p.refused_since,
                )
                for p in pending
            ),
            return_exceptions=True,
        )
        retryable: TaskHistoryError | None = None
        for item, result in zip(pending, results, strict=True):
            if result is None:
                outcome.sent.add(id(item))
            elif isinstance(result, TaskHistoryError):
                retryable = retryable or result
            elif isinstance(result, asyncio.CancelledError):
                raise result
            else:
                log.error(
                    "internal error parking one message; it becomes a dead letter",
                    message_id=item.delivery.message.message_id,
                    exc_info=result,
                )
                outcome.parked.remove(item)
                outcome.rejected.append(internal_error(item.delivery, failure(result), outcome.now))
        if retryable is not None:
            raise retryable

    async def _current_retention(self) -> timedelta:
        """The retention setting, read again every half minute so a change applies soon."""
        now = asyncio.get_running_loop().time()
        if now - self._retention_read_at > RETENTION_REFRESH_SECONDS:
            _, self._retention = await self._store.limits()
            self._retention_read_at = now
        return self._retention


def _is_refusal(exc: TaskHistoryError) -> bool:
    """A database that answers but refuses the write, for a reason that is not any row's."""
    return isinstance(exc, StoreError) and not isinstance(
        exc, DatabaseUnavailableError | ConcurrencyConflictError | DataRejectedError
    )


def _among(delivery: Delivery, rejected: list[Rejected]) -> bool:
    return any(r.delivery is delivery for r in rejected)


def _storable(found: Rejected) -> Rejected:
    """`found`, or its bare form if its letter could not be encoded for the table."""
    try:
        letter_row(found.letter)
    except Exception as exc:  # noqa: BLE001  # any value that can't be encoded: bare letter
        log.warning(
            "dead letter kept without headers and properties",
            message_id=found.letter.message_id,
            error=failure(exc),
        )
        return Rejected(found.delivery, _stripped(found.letter, exc))
    return found


def _stripped(letter: DeadLetter, exc: BaseException) -> DeadLetter:
    """`letter` without its headers and properties, the detail saying why."""
    detail = one_line(f"{letter.detail} (headers and properties not kept: {failure(exc)})")
    code = letter.code or ErrorCode.INTERNAL_ERROR.value
    return dataclasses.replace(letter, headers={}, properties={}, detail=detail, code=code)
