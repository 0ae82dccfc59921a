"""The consumer's life: wait for the servers, consume into the pipeline, expire, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from consumer.batcher import Inbox
from consumer.broker.client import Broker
from consumer.broker.decoding import Trust
from consumer.broker.signing import HeaderSigner
from consumer.errors import (
    BrokerError,
    BrokerUnavailableError,
    DatabaseUnavailableError,
    TaskHistoryError,
)
from consumer.expiry import ExpiryBackend, ExpiryLoop
from consumer.flow import ASSUMED_BYTES, PrefetchBySize
from consumer.incoming import Incoming
from consumer.intake import Intake, Subscription
from consumer.metrics import HealthServer, Metrics
from consumer.pipeline import HistoryWriter, Outbox, Pipeline
from consumer.readiness import PROBE_TIMEOUT, ReadinessWatch, Signs
from consumer.redaction import redact
from consumer.retry import backoff
from consumer.settings import Settings
from consumer.shutdown import Shutdown, exit_if_stuck
from consumer.signals import stop_on_signals
from consumer.store import Store
from consumer.topology import Topology
from consumer.triage import Delivery

log = structlog.get_logger("consumer")

# After the shutdown deadline, what a stop may still take: closing the health server (2 s), the
# broker connection and the database pool (10 s each at most). Past it, the stop is stuck.
CLOSING_SECONDS = 30.0
# How often a task being cancelled at the end is asked again, until it has ended.
RECANCEL_SECONDS = 1.0


class ConsumerStore(HistoryWriter, ExpiryBackend, Protocol):
    """The database as the worker uses it: the pipeline's and the expiry loop's, and a life."""

    async def open(self) -> None:
        """Connect."""

    async def close(self) -> None:
        """Disconnect, politely."""

    def terminate(self) -> None:
        """Drop every connection at once."""

    async def check_schema(self) -> None:
        """Raise NotMigratedError unless every migration is applied."""

    async def ping(self, *, within: float = 2) -> None:
        """Raise unless the database answers within `within` seconds."""

    async def replication(self) -> tuple[int, bool]:
        """How many standbys the database streams to, and whether commits wait for one."""

    async def header_key(self) -> bytes:
        """This deployment's key for signing the consumer's own headers."""


class ConsumerBroker(Outbox, Subscription, Protocol):
    """The broker as the worker uses it: the pipeline's outbox, and a subscription."""

    @property
    def topology(self) -> Topology:
        """The names it declares and consumes from."""

    @property
    def consuming(self) -> bool:
        """Whether deliveries are flowing."""

    async def connect(self) -> None:
        """Connect."""

    async def declare(self) -> None:
        """Declare the exchanges and queues."""

    async def consume(
        self,
        handler: Callable[[Incoming], Awaitable[None]],
        *,
        prefetch: int,
        transit: bool = False,
        trust: Trust | None = None,
    ) -> None:
        """Deliver the events queue to `handler`, and the dead-letter queue with `transit`."""

    async def waiting(self) -> int:
        """How many messages wait in the events queue, ready to be delivered."""

    async def cancel(self) -> None:
        """Stop deliveries."""

    async def close(self) -> None:
        """Disconnect."""


class Worker:
    """Moves events from the queue to the table until stopped."""

    def __init__(self, settings: Settings, *, store: ConsumerStore, broker: ConsumerBroker) -> None:
        """Prepare a worker on `store` and `broker`, not yet open; `run()` opens and consumes."""
        self._settings = settings
        self._store = store
        self._broker = broker
        self._inbox: Inbox[Delivery] = Inbox(
            max_size=settings.batch_size,
            max_wait=settings.batch_wait_ms / 1000,
            size_of=_body_bytes,
            high_bytes=settings.inbox_high_bytes,
            low_bytes=settings.inbox_low_bytes,
            max_batch_bytes=settings.inbox_high_bytes // 4,
        )
        # What decoding believes with: the key and the retention, read from the database.
        self._trust = Trust(dead_letter_exchange=settings.topology.dead_letter_exchange)
        # How many messages the broker sends ahead, fitted to their size (consumer.flow).
        self._prefetch = PrefetchBySize(
            high_bytes=settings.inbox_high_bytes,
            most=settings.effective_prefetch,
            assumed_bytes=ASSUMED_BYTES,
        )
        self._shutdown = Shutdown()
        self._shutdown_timer: asyncio.Timeout | None = None
        self._abandon: asyncio.TimerHandle | None = None
        self.metrics = Metrics()
        self._intake = Intake(
            subscription=broker,
            inbox=self._inbox,
            prefetch=self._prefetch,
            metrics=self.metrics,
            shutdown=self._shutdown,
        )
        self._pipeline = Pipeline(
            store=store,
            broker=broker,
            settings=settings,
            metrics=self.metrics,
            shutdown=self._shutdown,
        )
        self._expiry = ExpiryLoop(
            store,
            interval=settings.expire_interval_seconds,
            batch_size=settings.expire_batch_size,
            metrics=self.metrics,
        )
        # When a delivery last came or a write last ended: progress, as the stall check sees it.
        self._progressed = time.monotonic()
        self._readiness = ReadinessWatch(
            self._observe, stall_after=settings.stall_seconds, gauge=self.metrics.ready
        )
        self.health: HealthServer | None = None
        if settings.metrics_port:
            self.health = HealthServer(
                self.metrics,
                ready=self._latest_readiness,
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
        broker = Broker(
            settings.amqp_url,
            topology=settings.topology,
            heartbeat=settings.amqp_heartbeat_seconds,
        )
        return cls(settings, store=store, broker=broker)

    def stop(self) -> None:
        """Stop taking messages; what is in hand is written and acked before `run` returns."""
        if self._shutdown.begun:
            return
        log.info("stopping", in_hand=len(self._inbox))
        self._shutdown.begin(timeout=self._settings.shutdown_timeout_seconds)
        self._inbox.interrupt()
        if self._shutdown_timer is not None:
            self._shutdown_timer.reschedule(self._shutdown.deadline)
        # A write stuck on a server that stopped answering can't be cancelled politely
        # (asyncpg waits for the server to confirm): at the deadline, drop the connections.
        loop = asyncio.get_running_loop()
        self._abandon = loop.call_at(self._shutdown.deadline, self._store.terminate)

    async def run(self) -> None:
        """Connect (waiting for both servers if need be), consume until stopped, close."""
        async with contextlib.AsyncExitStack() as cleanup:
            # Undone in reverse order, each whatever the others did: a failure to stop the
            # health server must not leave the broker or the database connected.
            cleanup.push_async_callback(self._store.close)
            cleanup.push_async_callback(self._broker.close)
            if self.health is not None:
                await self.health.start()  # /healthz answers while the servers are awaited
                cleanup.push_async_callback(self.health.stop)
            cleanup.callback(self._cancel_abandon)
            watch = asyncio.create_task(self._readiness.run())
            cleanup.push_async_callback(_cancelled, watch)
            if await self._connected():
                await self._consume()
            else:
                log.info("stopped")  # before consuming: nothing was taken

    async def _connected(self) -> bool:
        """Connect to both servers and check the database; False if stopped first."""
        if not await self._until_up("database", self._store.open):
            return False
        await self._store.check_schema()
        await self._check_replication()
        self._trust.signer = HeaderSigner(await self._store.header_key())
        _, self._trust.retention = await self._store.limits()
        if not await self._until_up("broker", self._broker.connect):
            return False
        await self._broker.declare()
        return True

    async def _check_replication(self) -> None:
        """Warn, once at start-up, when a failover could lose events already acknowledged.

        An event is acked once its transaction commits on the primary. With standbys that
        replicate asynchronously, a primary that fails before they received that commit takes
        it along, and the promoted standby never had it; the broker no longer has it either.
        """
        standbys, synchronous = await self._store.replication()
        exposed = 0 if synchronous else standbys
        self.metrics.asynchronous_standbys.set(exposed)
        if exposed:
            log.warning(
                "the database streams to standbys, none of them synchronous: a failover can"
                " lose events already acknowledged; set synchronous_standby_names (see"
                " docs/scaling.md, High availability)",
                standbys=standbys,
            )

    def _cancel_abandon(self) -> None:
        if self._abandon is not None:
            self._abandon.cancel()

    async def readiness(self) -> str | None:
        """Check now: None while consuming, both servers answering, no stall; else why not.

        /readyz answers from the last periodic check instead, at once.
        """
        return await self._readiness.check()

    async def _latest_readiness(self) -> str | None:
        """What the last check found (at most CHECK_INTERVAL old): /readyz answers at once."""
        return self._readiness.verdict

    async def _observe(self) -> Signs:
        """What readiness is judged from; the servers are asked only while consuming."""
        if self._shutdown.begun or not self._broker.consuming:
            return Signs(stopping=self._shutdown.begun, consuming=self._broker.consuming)
        if self._pipeline.refusal is not None:
            return Signs(refusal=self._pipeline.refusal)
        waiting, broker_problem = await self._ask_broker()
        if waiting is not None:
            self.metrics.queue_messages.set(waiting)
        database_problem = None
        try:
            await self._store.ping(within=PROBE_TIMEOUT)
        except TaskHistoryError as exc:
            database_problem = str(exc)
        return Signs(
            broker_problem=broker_problem,
            database_problem=database_problem,
            waiting=waiting,
            idle_seconds=time.monotonic() - self._progressed,
        )

    async def _ask_broker(self) -> tuple[int | None, str | None]:
        """Messages waiting in the queue, or why the broker did not say."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                return await self._broker.waiting(), None
        except TimeoutError:
            return None, f"the broker did not answer within {PROBE_TIMEOUT:g} s"
        except TaskHistoryError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001  # aiormq raises bare Exception on a lost channel
            # Whatever the client raised, the answer is the same: the broker did not say.
            return None, f"the broker did not answer: {redact(str(exc)) or type(exc).__name__}"

    async def _consume(self) -> None:
        # What the broker dead-letters itself (a poison message past the delivery limit) comes
        # through the same pipeline into the dead-letter table: the queue is only a way in.
        await self._broker.consume(
            self._deliver,
            prefetch=self._prefetch.current,
            transit=True,
            trust=self._trust,
        )
        log.info(
            "consuming",
            queue=self._broker.topology.queue,
            batch_size=self._settings.batch_size,
            batch_wait_ms=self._settings.batch_wait_ms,
            prefetch=self._settings.effective_prefetch,
            prefetch_at_first=self._prefetch.current,
        )
        expiry = asyncio.create_task(self._expiry.run())
        # No limit while running; stop() sets one at the shutdown deadline. It bounds the batch
        # in hand and the drain, a hung server included. Cutting a write short is safe: nothing
        # is acked before its commit, so the broker redelivers.
        timer = asyncio.timeout(None)
        try:
            async with timer:
                self._shutdown_timer = timer  # reschedule() works only while entered
                if self._shutdown.begun:
                    timer.reschedule(self._shutdown.deadline)
                # One write at a time, the next taken as soon as it ends: what arrived during
                # a write is the next batch, and an event reaching an idle consumer goes at once.
                while not self._shutdown.begun:
                    batch = await self._inbox.take()
                    if batch:
                        await self._handle(batch)
                        self._progressed = time.monotonic()
                await self._intake.close()
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
            await _cancelled(expiry)
            self._pipeline.close()
        log.info("stopped")

    async def _handle(self, batch: list[Delivery]) -> None:
        """Write a batch; its bytes are let go after, and the subscription fitted to what came."""
        await self._intake.between_batches()
        try:
            await self._pipeline.handle(batch)
        finally:
            self._inbox.release(batch)
            self._trust.retention = self._pipeline.retention or self._trust.retention
            self.metrics.inbox_bytes.set(self._inbox.held_bytes)
            self._intake.after_batch()

    async def _deliver(self, message: Incoming) -> None:
        self._progressed = time.monotonic()
        self._prefetch.observe(message.body.size)
        self._inbox.put(Delivery(message))

    async def _until_up(self, name: str, connect: Callable[[], Awaitable[None]]) -> bool:
        """Connect, retrying with backoff while the server is down; False if stopped first."""
        attempt = 0
        while not self._shutdown.begun:
            try:
                await connect()
            # Only an unreachable server is waited for: refused credentials or a bad setting
            # would never pass, and fail start-up at once.
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
                await self._shutdown.pause(delay)
            else:
                return True
        return False


def _body_bytes(delivery: Delivery) -> int:
    """What a delivery holds in memory, as the byte budget counts it: its body as kept."""
    return len(delivery.message.body.data)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again each second until then.

    Once is not always enough: a cancellation that reaches the AMQP client during a call on a
    connection it is closing comes out as that connection's error (aiormq's TaskWrapper), so a
    loop that outlives such errors, as the readiness watch does, would run on.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class BoundedStop:
    """What a signal does to a running worker: stop it, and end the process if the stop hangs.

    `also` are called too, for whatever runs beside the worker in the same process.
    """

    def __init__(self, worker: Worker, settings: Settings, *also: Callable[[], None]) -> None:
        """A stop for `worker`, bounded by the shutdown timeout of `settings`."""
        self._worker = worker
        self._also = also
        self._after = settings.shutdown_timeout_seconds + CLOSING_SECONDS
        self._watchdog: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        """Stop; the first call arms the watchdog."""
        self._worker.stop()
        for stop in self._also:
            stop()
        if self._watchdog is None:
            self._watchdog = exit_if_stuck(after=self._after)

    def disarm(self) -> None:
        """The stop ended: no exit."""
        if self._watchdog is not None:
            self._watchdog.cancel()


async def consume(settings: Settings) -> None:
    """Run the consumer until SIGTERM or SIGINT; a stop ends the process, whatever hangs."""
    worker = Worker.from_settings(settings)
    stop = BoundedStop(worker, settings)
    try:
        with stop_on_signals(stop):
            await worker.run()
    finally:
        stop.disarm()
