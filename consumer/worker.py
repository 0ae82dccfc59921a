"""The consumer: deliveries in, one statement per batch, acks out; outages waited out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog

from consumer.batcher import Inbox
from consumer.broker import Broker, Received
from consumer.broker.headers import RECEIVED_AT, WAITING_SINCE, header_time
from consumer.entries import NewEntry
from consumer.errors import (
    BrokerError,
    BrokerUnavailableError,
    DatabaseUnavailableError,
    DataRejectedError,
    ErrorCode,
    InvalidEventError,
    NotMigratedError,
    StoreError,
    TaskHistoryError,
)
from consumer.events import check_retention, parse_event
from consumer.metrics import HealthServer, Metrics
from consumer.retry import backoff
from consumer.settings import Settings
from consumer.signals import stop_on_signals
from consumer.store import Store

log = structlog.get_logger("consumer")

# Failures of a batch that are waited out: the batch stays unacked (never nacked: on RabbitMQ
# 3.10 every nack counts toward the delivery limit) and is written again after a pause. That
# is every database or broker error, not only lost connections: a read-only failover, a full
# disk or a revoked grant must not crash-loop the consumer into dead-lettering valid events.
# A row the database refuses for its data never gets here: bisection dead-letters it alone.
RETRYABLE = (StoreError, NotMigratedError, BrokerError)
RETENTION_REFRESH_SECONDS = 30.0
# How long a registered pg_cron expiry job may go without running before the consumers take
# expiry back: longer than any sensible schedule (daily at most), short of a real problem.
CRON_SILENCE = timedelta(hours=25)


@dataclass(slots=True)
class Delivery:
    """A message as it arrived, and when; parsed once, however often its batch is retried.

    `received_at` is when the event was first received: a copy back from the retry queue
    carries that time in a header, read at parse time.
    """

    message: Received
    received_at: datetime
    parsed: NewEntry | InvalidEventError | None = None

    def parse(self) -> NewEntry:
        """The message as a row, or InvalidEventError; an id generated here is kept for retries."""
        if self.parsed is None:
            self.parsed = _parse(self)
        if isinstance(self.parsed, InvalidEventError):
            raise self.parsed
        return self.parsed


def _parse(delivery: Delivery) -> NewEntry | InvalidEventError:
    message = delivery.message
    delivery.received_at = header_time(message, RECEIVED_AT) or delivery.received_at
    try:
        return parse_event(
            message.body, message_id=message.message_id, received_at=delivery.received_at
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


class Worker:
    """Moves events from the queue to the table until stopped."""

    def __init__(self, settings: Settings, *, store: Store, broker: Broker) -> None:
        """Prepare a worker on `store` and `broker`, not yet open; `run()` opens and consumes."""
        self._settings = settings
        self._store = store
        self._broker = broker
        self._inbox: Inbox[Delivery] = Inbox(
            max_size=settings.batch_size, max_wait=settings.batch_wait_ms / 1000
        )
        self._stopping = asyncio.Event()
        self._deadline = float("inf")
        self._retention = timedelta(0)
        self._retention_read_at = float("-inf")
        self._shutdown_timer: asyncio.Timeout | None = None
        self._abandon: asyncio.TimerHandle | None = None
        self.metrics = Metrics()
        self.health: HealthServer | None = None
        if settings.metrics_port:
            self.health = HealthServer(
                self.metrics,
                ready=self.readiness,
                host=settings.metrics_host,
                port=settings.metrics_port,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> Worker:
        """A worker on the database and broker the settings name."""
        store = Store(
            settings.database_url,
            max_connections=3,
            command_timeout=settings.database_timeout_seconds,
        )
        return cls(
            settings, store=store, broker=Broker(settings.amqp_url, topology=settings.topology)
        )

    def stop(self) -> None:
        """Stop taking messages; what is in hand is written and acked before `run` returns."""
        if not self._stopping.is_set():
            log.info("stopping", in_hand=len(self._inbox))
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + self._settings.shutdown_timeout_seconds
            self._stopping.set()
            self._inbox.interrupt()
            if self._shutdown_timer is not None:
                self._shutdown_timer.reschedule(self._deadline)
            # A write stuck on a server that stopped answering can't be cancelled politely
            # (asyncpg waits for the server to confirm): at the deadline, drop the connections.
            self._abandon = loop.call_at(self._deadline, self._store.terminate)

    async def run(self) -> None:
        """Connect (waiting for both servers if need be), consume until stopped, close."""
        try:
            if self.health is not None:
                await self.health.start()  # /healthz answers while the servers are awaited
            if not await self._until_up("database", self._store.open):
                return
            await self._store.check_schema()
            if not await self._until_up("broker", self._broker.connect):
                return
            await self._broker.declare()
            await self._consume()
        finally:
            if self._abandon is not None:
                self._abandon.cancel()
            if self.health is not None:
                await self.health.stop()
            await self._broker.close()
            await self._store.close()

    async def readiness(self) -> str | None:
        """None while consuming with both servers answering; else why not, in a few words."""
        if self._stopping.is_set():
            return "stopping"
        if not self._broker.consuming:
            return "not consuming from the broker"
        try:
            await self._store.ping()
        except TaskHistoryError as exc:
            return str(exc)
        return None

    async def _consume(self) -> None:
        await self._broker.consume(self._deliver, prefetch=self._settings.effective_prefetch)
        log.info(
            "consuming",
            queue=self._broker.topology.queue,
            batch_size=self._settings.batch_size,
            batch_wait_ms=self._settings.batch_wait_ms,
            prefetch=self._settings.effective_prefetch,
        )
        expiry = asyncio.create_task(self._expire_periodically())
        # No limit while running; stop() sets one at the shutdown deadline. It bounds the batch
        # in hand and the drain, a hung server included. Cutting a write short is safe: nothing
        # is acked before its commit, so the broker redelivers.
        timer = asyncio.timeout(None)
        try:
            async with timer:
                self._shutdown_timer = timer  # reschedule() works only while entered
                if self._stopping.is_set():
                    timer.reschedule(self._deadline)
                while not self._stopping.is_set():
                    batch = await self._inbox.take()
                    if batch:
                        await self._handle(batch)
                with contextlib.suppress(BrokerError):
                    await self._broker.cancel()  # after this no delivery comes
                while len(self._inbox):
                    await self._handle(self._inbox.take_nowait())
        except TimeoutError:
            if not timer.expired():
                raise
            log.warning("shutdown timeout: messages left unacked for redelivery")
        finally:
            self._shutdown_timer = None
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry
        log.info("stopped")

    async def _deliver(self, message: Received) -> None:
        self._inbox.put(Delivery(message, datetime.now(UTC)))

    async def _until_up(self, name: str, connect: Callable[[], Awaitable[None]]) -> bool:
        """Connect, retrying with backoff while the server is down; False if stopped first."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                await connect()
            except (DatabaseUnavailableError, BrokerUnavailableError) as exc:
                attempt += 1
                delay = backoff(attempt, cap=self._settings.retry_backoff_max_seconds)
                log.warning(
                    "server unavailable; retrying",
                    server=name,
                    attempt=attempt,
                    retry_in=round(delay, 2),
                    error=str(exc),
                )
                await self._pause(delay)
            else:
                return True
        return False

    async def _pause(self, seconds: float) -> None:
        """Sleep; cut short by a stop, and never past the shutdown deadline."""
        if self._stopping.is_set():
            remaining = self._deadline - asyncio.get_running_loop().time()
            await asyncio.sleep(max(0.0, min(seconds, remaining)))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _handle(self, batch: list[Delivery]) -> None:
        """Write a batch and ack it, retrying until it works, its channel closes, or time is up."""
        self.metrics.received.inc(len(batch))  # once a batch: a lock per message costs
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempt = 0
        while True:
            try:
                await self._process(batch, started)
            except RETRYABLE as exc:
                if not self._broker.holds_any([d.message for d in batch]):
                    log.warning(
                        "batch dropped: its channel closed, the broker redelivers it",
                        size=len(batch),
                    )
                    return
                attempt += 1
                self.metrics.batch_retries.inc()
                delay = backoff(attempt, cap=self._settings.retry_backoff_max_seconds)
                if self._stopping.is_set() and loop.time() + delay > self._deadline:
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
                if isinstance(exc, StoreError | NotMigratedError):
                    # Fresh connections next time: after a failover the old ones may still
                    # point at a server that went read-only.
                    await self._store.reconnect()
                await self._pause(delay)
            else:
                return

    async def _process(self, batch: list[Delivery], started: float) -> None:
        now = datetime.now(UTC)
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

        valid, waiting, unknown = await self._sort_out_unknown_tasks(valid, now)
        rejected += unknown
        write_started = asyncio.get_running_loop().time()
        stored_ids, refused = await self._insert(valid)
        self.metrics.write_seconds.observe(asyncio.get_running_loop().time() - write_started)
        stored = len(stored_ids)
        rejected += refused

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
            for d, since in waiting
        ]
        await asyncio.gather(*publishes)  # confirms overlap; the first failure is raised
        unacked = await self._broker.ack([d.message for d in batch])

        self._count(batch, valid, stored_ids, rejected, waiting=len(waiting), refused=len(refused))
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
            stored=stored,
            duplicates=len(valid) - stored - len(refused),
            dead_lettered=len(rejected),
            waiting_for_task=len(waiting),
            unacked=unacked,
            ms=round((asyncio.get_running_loop().time() - started) * 1000, 1),
        )

    async def _sort_out_unknown_tasks(
        self, valid: list[tuple[Delivery, NewEntry]], now: datetime
    ) -> tuple[list[tuple[Delivery, NewEntry]], list[tuple[Delivery, datetime]], list[Rejected]]:
        """Split off events whose task doesn't exist: (to store, to retry later, to dead-letter)."""
        missing = await self._store.missing_tasks({entry.task_id for _, entry in valid})
        if not missing:
            return valid, [], []
        if self._settings.create_missing_tasks:
            await self._store.create_tasks(missing)
            return valid, [], []
        window = self._settings.unknown_task_retry_seconds
        keep: list[tuple[Delivery, NewEntry]] = []
        waiting: list[tuple[Delivery, datetime]] = []
        rejected: list[Rejected] = []
        for delivery, entry in valid:
            if entry.task_id not in missing:
                keep.append((delivery, entry))
                continue
            since = header_time(delivery.message, WAITING_SINCE) or now
            waited = (now - since).total_seconds()
            if waited >= window:
                detail = f"task_id: no task {entry.task_id} exists"
                if window:
                    detail += f" (retried for {round(waited)} s)"
                rejected.append(Rejected(delivery, ErrorCode.UNKNOWN_TASK, detail))
            else:
                waiting.append((delivery, since))
        return keep, waiting, rejected

    async def _insert(
        self, rows: list[tuple[Delivery, NewEntry]]
    ) -> tuple[set[UUID], list[Rejected]]:
        """Insert in one statement; if the database refuses a row, bisect to find which.

        Returns the ids stored as new rows, and the rows refused.

        Halves are written in order, so arrival order holds; a refused row costs about
        log2(batch) extra statements, never one statement per row.
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

    def _count(  # noqa: PLR0913  # one call site; the batch's outcome, part by part
        self,
        batch: list[Delivery],
        valid: list[tuple[Delivery, NewEntry]],
        stored_ids: set[UUID],
        rejected: list[Rejected],
        *,
        waiting: int,
        refused: int,
    ) -> None:
        """Add a batch's outcome, acked just now, to the metrics."""
        self.metrics.batch_size.observe(len(batch))
        self.metrics.stored.inc(len(stored_ids))
        self.metrics.duplicates.inc(len(valid) - len(stored_ids) - refused)
        self.metrics.waiting_for_task.inc(waiting)
        for r in rejected:
            self.metrics.dead_lettered.labels(code=r.code.value).inc()
        # One lag per stored row: a batch may hold the same event twice (a republish).
        created = {entry.id: entry.created_at for _, entry in valid if entry.id in stored_ids}
        self.metrics.observe_lag(list(created.values()), now=datetime.now(UTC))

    async def _current_retention(self) -> timedelta:
        """The retention setting, read again every half minute so a change applies soon."""
        now = asyncio.get_running_loop().time()
        if now - self._retention_read_at > RETENTION_REFRESH_SECONDS:
            _, self._retention = await self._store.limits()
            self._retention_read_at = now
        return self._retention

    async def _expire_periodically(self) -> None:
        """Run expiry every interval, unless pg_cron does; one replica at a time (advisory lock)."""
        interval = self._settings.expire_interval_seconds
        if interval <= 0:
            return
        scheduled: str | None = None
        while True:
            try:
                # Asked every interval: `task-history schedule` may be run, or undone, any time.
                now_scheduled = await self._store.expiry_job()
                if now_scheduled is not None and await self._store.expiry_job_silent(
                    longer_than=CRON_SILENCE
                ):
                    # A broken pg_cron (preload removed, database restored elsewhere) must not
                    # stop expiry for good: past a day of silence, expire here again.
                    log.warning(
                        "pg_cron job has not run for a day; expiring here", job=now_scheduled
                    )
                    now_scheduled = None
                if now_scheduled != scheduled:
                    scheduled = now_scheduled
                    if scheduled is None:
                        log.info("expiry is this consumer's again: no pg_cron job is registered")
                    else:
                        log.info("expiry left to pg_cron", job=scheduled)
                if scheduled is not None:
                    self.metrics.expiry_runs.labels(outcome="scheduled").inc()
                else:
                    deleted = await self._store.expire_exclusively(
                        batch_size=self._settings.expire_batch_size
                    )
                    if deleted is None:
                        self.metrics.expiry_runs.labels(outcome="locked").inc()
                        log.debug("expiry skipped: another replica is running it")
                    else:
                        self.metrics.expiry_runs.labels(outcome="done").inc()
                        self.metrics.expired.inc(deleted)
                        log.info("expired", deleted=deleted)
            except TaskHistoryError as exc:
                self.metrics.expiry_runs.labels(outcome="failed").inc()
                log.warning("expiry failed; trying again next interval", error=str(exc))
            await asyncio.sleep(interval)


async def consume(settings: Settings) -> None:
    """Run the consumer until SIGTERM or SIGINT."""
    worker = Worker.from_settings(settings)
    with stop_on_signals(worker.stop):
        await worker.run()
