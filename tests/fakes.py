"""In-memory stand-ins for the database and the broker, for the consumer's decisions.

They keep the promises the real ones make that the pipeline relies on (ids stored once, rows
in order, acks only of messages still held) and write what happens to a shared journal, so
a test can check the order of commits, dead letters and acks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.broker.decoding import Trust, decode
from consumer.broker.signing import HeaderSigner
from consumer.deadletters import DeadLetter, letter_row
from consumer.entries import NewEntry
from consumer.errors import (
    BrokerUnavailableError,
    DatabaseUnavailableError,
    DataRejectedError,
    NotConnectedError,
)
from consumer.expiry import Expired
from consumer.incoming import Incoming
from consumer.topology import Topology

# The key the fakes sign and check the consumer's own headers with.
TEST_KEY = bytes(range(32))
SIGNER = HeaderSigner(TEST_KEY)

Journal = list[tuple[str, str]]
"""What happened, in order: ("commit", content), ("dead_letter", code), ("ack", message_id)."""


@dataclass
class FakeMessage:
    """A delivered message: a body and the AMQP properties the pipeline reads."""

    body: bytes
    message_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str | None = "history.agent_turn"
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    app_id: str | None = None
    # Read from dead letters only.
    exchange: str | None = None
    delivery_mode: int | None = None
    expiration: str | None = None
    user_id: str | None = None

    # What a lenient reading of its frames left out (consumer.broker.frames).
    unreadable: tuple[str, ...] = ()

    @classmethod
    def of(cls, event: dict[str, Any], **properties: Any) -> FakeMessage:  # noqa: ANN401  # the properties above
        """A message carrying `event` as JSON, its message_id a new UUID unless given."""
        properties.setdefault("message_id", str(uuid.uuid4()))
        return cls(json.dumps(event).encode(), **properties)

    def signed(self) -> FakeMessage:
        """This message, its headers signed as the consumer signs its own (with TEST_KEY)."""
        self.headers = SIGNER.sign(self.headers, body=self.body)
        return self

    def incoming(
        self, *, trust: Trust | None = None, transit: bool = False, now: datetime | None = None
    ) -> Incoming:
        """This message as the broker adapter hands it over; its receipt is this object."""
        return decode(
            self.body,
            exchange=self.exchange,
            routing_key=self.routing_key,
            properties={
                "content_type": self.content_type,
                "content_encoding": self.content_encoding,
                "headers": self.headers,
                "delivery_mode": self.delivery_mode,
                "priority": self.priority,
                "correlation_id": self.correlation_id,
                "reply_to": self.reply_to,
                "expiration": self.expiration,
                "message_id": self.message_id,
                "timestamp": self.timestamp,
                "type": self.type,
                "user_id": self.user_id,
                "app_id": self.app_id,
            },
            unreadable=self.unreadable,
            transit=transit,
            trust=trust or Trust(signer=SIGNER),
            now=now or datetime.now(UTC),
            receipt=self,
        )


@dataclass
class InMemoryStore:
    """The history database as a dict: tasks, rows in arrival order, and the two limits."""

    journal: Journal = field(default_factory=list)
    tasks: set[uuid.UUID] = field(default_factory=set)
    rows: dict[uuid.UUID, NewEntry] = field(default_factory=dict)
    # Every id stored, as the ledger of received ids keeps them (rows may be deleted later).
    received: set[uuid.UUID] = field(default_factory=set)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    retention: timedelta = timedelta(days=20)
    # A row the database refuses, as a CHECK constraint or an encoding error would.
    refuses: Callable[[NewEntry], bool] = lambda _entry: False
    # A dead letter the database refuses (a value its columns can't hold).
    refuses_letter: Callable[[DeadLetter], bool] = lambda _letter: False
    # A row the driver fails on with an error nobody expected (a bug, not a refusal).
    breaks_on: Callable[[NewEntry], bool] = lambda _entry: False
    # Errors the next calls raise, one each, before the store works again.
    failures: list[Exception] = field(default_factory=list)
    # An outage: every call before this moment (the event loop's clock) can't reach it.
    unreachable_until: float = 0.0
    # True plays a server that stopped answering: inserts wait forever.
    hangs: bool = False
    statements: int = 0
    reconnects: int = 0
    opened: bool = False
    terminated: bool = False
    expiry_job_name: str | None = None
    expired_runs: int = 0
    # Standbys the database streams to, and whether one of them is synchronous.
    standbys: int = 0
    synchronous: bool = False

    def _maybe_fail(self) -> None:
        if self.terminated:  # as the real store: an outage, so the shutdown deadline applies
            raise DatabaseUnavailableError("connections dropped at the shutdown deadline")
        if not self.opened:
            raise NotConnectedError("the store is not open")
        if asyncio.get_running_loop().time() < self.unreachable_until:
            raise DatabaseUnavailableError("database unavailable: the outage is not over")
        if self.failures:
            raise self.failures.pop(0)

    async def open(self) -> None:
        """Connect (or fail with the next queued error)."""
        if self.failures:
            raise self.failures.pop(0)
        self.opened = True

    async def close(self) -> None:
        """Disconnect."""
        self.opened = False

    def terminate(self) -> None:
        """Drop the connections."""
        self.terminated = True

    async def reconnect(self) -> None:
        """Count a request for fresh connections."""
        self.reconnects += 1

    async def check_schema(self) -> None:
        """Always migrated."""
        self._maybe_fail()

    async def ping(self, *, within: float = 2) -> None:  # noqa: ARG002  # answers at once
        """Answer, unless an error is queued."""
        self._maybe_fail()

    async def replication(self) -> tuple[int, bool]:
        """The standbys, and whether one is synchronous."""
        self._maybe_fail()
        return self.standbys, self.synchronous

    async def limits(self) -> tuple[int, timedelta]:
        """The cap and the retention."""
        self._maybe_fail()
        return 100, self.retention

    async def missing_tasks(self, task_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """The ids with no task."""
        self._maybe_fail()
        return set(task_ids) - self.tasks

    async def create_tasks(self, task_ids: Collection[uuid.UUID]) -> None:
        """Add the tasks."""
        self._maybe_fail()
        self.tasks |= set(task_ids)

    async def write_batch(
        self, entries: Sequence[NewEntry], dead_letters: Sequence[DeadLetter]
    ) -> set[uuid.UUID]:
        """All or nothing, as one transaction: a refused row fails it whole; ids seen skipped."""
        self._maybe_fail()
        self.statements += 1
        if self.hangs:
            await asyncio.Event().wait()
        if any(self.breaks_on(entry) for entry in entries):
            raise TypeError("the driver could not encode a value")
        if any(self.refuses(entry) for entry in entries):
            raise DataRejectedError("value violates a check constraint")
        for letter in dead_letters:
            letter_row(letter)  # as the real store encodes them: a value that can't be, raises
        if any(self.refuses_letter(letter) for letter in dead_letters):
            raise DataRejectedError("dead letter refused", reason="a value out of range")
        new = {entry.id for entry in entries if entry.id not in self.received}
        for entry in entries:
            if entry.id in new and entry.id not in self.rows:
                self.rows[entry.id] = entry
                self.journal.append(("commit", entry.content))
        self.received |= new
        for letter in dead_letters:
            self.dead_letters.append(letter)
            self.journal.append(("dead_letter", letter.code))
        return new

    async def header_key(self) -> bytes:
        """The key the fakes sign with."""
        self._maybe_fail()
        return TEST_KEY

    async def expiry_job(self) -> str | None:
        """The registered pg_cron job, if the test set one."""
        self._maybe_fail()
        return self.expiry_job_name

    async def expiry_job_silent(self, *, longer_than: timedelta) -> bool:  # noqa: ARG002  # never silent here
        """Never silent."""
        return False

    async def expire_exclusively(self, *, batch_size: int) -> Expired | None:  # noqa: ARG002  # nothing to delete
        """Count a run; nothing expires here."""
        self._maybe_fail()
        self.expired_runs += 1
        return Expired(entries=0, dead_letters=0)

    async def forget_received(self, *, batch_size: int) -> int:  # noqa: ARG002  # all at once
        """Forget nothing: the window outlasts any test."""
        self._maybe_fail()
        return 0

    @property
    def contents(self) -> list[str]:
        """The stored rows' contents, in arrival order."""
        return [entry.content for entry in self.rows.values()]


@dataclass
class InMemoryBroker:
    """The broker as the consumer sees it: deliveries pushed by the test, copies and acks kept."""

    journal: Journal = field(default_factory=list)
    topology: Topology = field(default_factory=Topology)
    # (the message retried, its window's start), as the test delivered it.
    retries: list[tuple[object, datetime | None]] = field(default_factory=list)
    acked: list[object] = field(default_factory=list)
    trust: Trust = field(default_factory=lambda: Trust(signer=SIGNER))
    # Errors the next publishes raise, one each.
    failures: list[Exception] = field(default_factory=list)
    # False plays a closed channel: nothing delivered before can be acked any more.
    channel_open: bool = True
    connected: bool = False
    declared: bool = False
    handler: Callable[[Incoming], Awaitable[None]] | None = None
    transit: bool = False
    paused: bool = False
    prefetch: int = 0
    # Messages the queue holds, as a passive declare reports them; None plays a broker that
    # does not answer (a frozen connection, a node cut off from the queue's leader).
    ready_messages: int | None = 0
    # Errors the next probes of the queue raise, one each.
    probe_failures: list[BaseException] = field(default_factory=list)
    # Set while a probe waits on a broker that does not answer.
    probing: asyncio.Event = field(default_factory=asyncio.Event)
    # As aiormq does during a connection's close: the caller's cancellation, reaching a call,
    # comes out as the connection's error.
    cancellation_as_error: bool = False

    async def connect(self) -> None:
        """Connect."""
        self.connected = True

    async def declare(self) -> None:
        """Declare."""
        self.declared = True

    async def close(self) -> None:
        """Disconnect."""
        self.connected = False

    async def consume(
        self,
        handler: Callable[[Incoming], Awaitable[None]],
        *,
        prefetch: int,
        transit: bool = False,
        trust: Trust | None = None,
    ) -> None:
        """Deliver what the test pushes to `handler`, dead-queue messages too with `transit`."""
        self.prefetch = prefetch
        self.handler = handler
        self.transit = transit
        if trust is not None:
            self.trust = trust

    async def pause(self) -> None:
        """Take no more deliveries (the test stops pushing)."""
        self.paused = True
        self.journal.append(("pause", "-"))

    async def resume(self) -> None:
        """Take deliveries again."""
        self.paused = False
        self.journal.append(("resume", "-"))

    async def until_quiet(self, *, within: float) -> bool:  # noqa: ARG002  # nothing in flight
        """Nothing is ever on its way here: the test pushes each delivery."""
        return True

    async def set_prefetch(self, count: int) -> None:
        """Note the prefetch asked for."""
        self.prefetch = count
        self.journal.append(("prefetch", str(count)))

    async def waiting(self) -> int:
        """`ready_messages`; while it is None, no answer (the caller's timeout ends the wait)."""
        if self.probe_failures:
            raise self.probe_failures.pop(0)
        if self.ready_messages is None:
            self.probing.set()
            try:
                await asyncio.Event().wait()  # never set: a broker that does not answer
            except asyncio.CancelledError:
                if not self.cancellation_as_error:
                    raise
                raise BrokerUnavailableError("broker unavailable: connection lost") from None
            finally:
                self.probing.clear()
        return self.ready_messages or 0

    async def cancel(self) -> None:
        """Stop deliveries."""
        self.handler = None
        self.transit = False

    @property
    def consuming(self) -> bool:
        """Whether a handler is subscribed."""
        return self.handler is not None and self.channel_open

    async def deliver(self, *messages: FakeMessage) -> None:
        """Hand messages to the subscribed consumer, decoded as the broker adapter does."""
        assert self.handler is not None, "nothing is consuming"
        for message in messages:
            await self.handler(message.incoming(trust=self.trust))

    async def deliver_dead(self, *messages: FakeMessage) -> None:
        """Hand messages to the consumer as the dead-letter queue would."""
        assert self.handler is not None, "nothing is consuming"
        assert self.transit, "nothing consumes the dead-letter queue"
        for message in messages:
            await self.handler(message.incoming(trust=self.trust, transit=True))

    def _maybe_fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    async def retry_later(
        self,
        message: Incoming,
        *,
        delay: float,  # noqa: ARG002  # the real one sets the copy's TTL
        waiting_since: datetime | None = None,
        refused_since: datetime | None = None,
    ) -> None:
        """Keep a confirmed retry copy."""
        self._maybe_fail()
        self.retries.append((message.receipt, waiting_since or refused_since))
        self.journal.append(("retry", message.message_id or "-"))

    async def ack(self, messages: Sequence[Incoming]) -> int:
        """Ack what the channel still holds; how many could not be."""
        if not self.channel_open:
            return len(messages)
        self.acked.extend(message.receipt for message in messages)
        self.journal.extend(("ack", message.message_id or "-") for message in messages)
        return 0

    def holds_any(self, messages: Sequence[Incoming]) -> bool:
        """Whether the channel that delivered them is open."""
        return self.channel_open and bool(messages)


async def until(condition: Callable[[], bool], *, within: float = 5) -> None:
    """Return once `condition()` holds; TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.001)
