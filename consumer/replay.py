"""The dead-letter tools on the table: census, find, replay, purge and export, at any number.

A replay claims a batch of rows (FOR UPDATE SKIP LOCKED), publishes each letter's copy with
confirms, and deletes the rows it sent in the same transaction before it commits: two replays
at once move each letter once, and one killed at any moment loses nothing (a letter may be
sent twice; the consumer stores an event with a known id once).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from consumer.broker.amqp import (
    CLOSE_GRACE,
    close_connection,
    connect_confirming,
    translated_errors,
)
from consumer.broker.headers import replay_headers
from consumer.broker.signing import HeaderSigner
from consumer.deadletters import Census, DeadLetter, Selection, refusal_to_replay
from consumer.errors import DeadLetterNotFoundError, TaskHistoryError, UnroutableError
from consumer.store import Store
from consumer.store.deadletters import Claim

# Rows a replay claims per transaction, and copies whose confirms it awaits together: enough
# to hide the round trips, few enough that a kill re-sends little.
REPLAY_BATCH = 1000
SEND_WINDOW = 250
# Rows a purge deletes per transaction.
PURGE_BATCH = 50_000
# Letters an outcome keeps to show, per kind; the rest are only counted.
SAMPLE_SIZE = 20

Progress = Callable[[int, int], None]
"""Told (letters done, letters selected) as a command goes."""

T = TypeVar("T")


@dataclass
class Tally(Generic[T]):
    """How many of one kind, and the first few of them to show."""

    count: int = 0
    sample: list[T] = field(default_factory=list)

    def add(self, item: T) -> None:
        """Count `item`; keep it if the sample has room."""
        self.count += 1
        if len(self.sample) < SAMPLE_SIZE:
            self.sample.append(item)


@dataclass
class Outcome:
    """What a replay or purge did (or, in a dry run, would do), and what is left."""

    dry_run: bool = False
    selected: int = 0
    done: Tally[DeadLetter] = field(default_factory=Tally)
    at_max_replays: Tally[DeadLetter] = field(default_factory=Tally)
    # Letters whose body was kept only in part: they can't be sent back (refusal_to_replay).
    not_whole: Tally[DeadLetter] = field(default_factory=Tally)
    unroutable: Tally[tuple[DeadLetter, str]] = field(default_factory=Tally)
    left: int = 0


async def census(store: Store, selection: Selection, *, sample_size: int = 5) -> Census:
    """The selected dead letters counted by error code and task, and the newest few."""
    return await store.dead_letter_census(selection, newest=sample_size)


async def find(store: Store, key: str) -> DeadLetter:
    """The dead letter whose row id is `key`, else the newest whose message_id is `key`."""
    letter = await store.dead_letter(key)
    if letter is None:
        raise DeadLetterNotFoundError(f"no dead letter has id or message id {key}")
    return letter


def replay_message(letter: DeadLetter, signer: HeaderSigner) -> aio_pika.Message:
    """The copy a replay publishes: body and properties as received, x-replay-count plus one.

    The copy is persistent, and carries the publisher's headers and the replay count, signed
    (see replay_headers and consumer.broker.signing); none of the consumer's own headers comes
    from the letter's stored headers, which a publisher may have written. user_id is left out
    (the broker refuses one other than the publishing connection's), and so is expiration
    (the copy must not expire on its way back).
    """
    properties = letter.properties
    headers = replay_headers(
        letter.headers, replay_count=letter.replay_count, message_id=letter.message_id
    )
    return aio_pika.Message(
        body=letter.body,
        headers=signer.sign(headers, body=letter.body),
        content_type=_text(properties.get("content_type")),
        content_encoding=_text(properties.get("content_encoding")),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=_number(properties.get("priority")),
        correlation_id=_text(properties.get("correlation_id")),
        reply_to=_text(properties.get("reply_to")),
        message_id=letter.message_id,
        timestamp=_time(properties.get("timestamp")),
        type=_text(properties.get("type")),
        app_id=_text(properties.get("app_id")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


class Republisher:
    """A confirming channel to the main exchange: sends replayed copies, mandatory."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        exchange: AbstractExchange,
        *,
        signer: HeaderSigner,
    ) -> None:
        """Send through `exchange` of `connection`, the copies' headers signed by `signer`."""
        self._connection = connection
        self._exchange = exchange
        self._signer = signer

    @classmethod
    async def connect(cls, url: str, exchange: str, *, signer: HeaderSigner) -> Republisher:
        """Connect to the broker at `url` and find `exchange` (BrokerError if it is missing)."""
        connection, channel = await connect_confirming(url)
        try:
            with translated_errors():
                target = await channel.get_exchange(exchange, ensure=True)
        except BaseException:
            await close_connection(connection, grace=CLOSE_GRACE)
            raise
        return cls(connection, target, signer=signer)

    async def close(self) -> None:
        """Disconnect."""
        await close_connection(self._connection, grace=CLOSE_GRACE)

    async def _send(self, letter: DeadLetter) -> None:
        with translated_errors():
            await self._exchange.publish(
                replay_message(letter, self._signer),
                routing_key=letter.routing_key,
                mandatory=True,
            )

    async def send(
        self, letters: Sequence[DeadLetter]
    ) -> tuple[list[DeadLetter], list[tuple[DeadLetter, str]]]:
        """Publish the copies, SEND_WINDOW in flight; (confirmed, unroutable with the reason).

        Any other failure is raised once every copy in flight has settled.
        """
        sent: list[DeadLetter] = []
        unroutable: list[tuple[DeadLetter, str]] = []
        for start in range(0, len(letters), SEND_WINDOW):
            window = letters[start : start + SEND_WINDOW]
            results = await asyncio.gather(
                *(self._send(letter) for letter in window), return_exceptions=True
            )
            failure: BaseException | None = None
            for letter, result in zip(window, results, strict=True):
                if isinstance(result, UnroutableError):
                    unroutable.append((letter, str(result)))
                elif isinstance(result, BaseException):
                    failure = failure or result
                else:
                    sent.append(letter)
            if failure is not None:
                raise failure
        return sent, unroutable


async def replay(  # noqa: PLR0913  # each option is one of the command's flags
    store: Store,
    republisher: Republisher | None,
    *,
    selection: Selection,
    limit: int | None = None,
    max_replays: int | None = 3,
    progress: Progress | None = None,
    action: int | None = None,
) -> Outcome:
    """Send the selected dead letters back to the exchange with their original routing key.

    Batch after batch: the next batch is claimed (on a second connection) while this one is
    published, and this one's rows are deleted and committed once every copy is confirmed.
    Without a `republisher` it is a dry run: the letters are read, not held, sent or deleted.
    Letters stored after the replay began (one that fails again, say) wait for the next run.
    With `action`, each batch is counted in that action's record as it commits.
    """
    outcome = Outcome(dry_run=republisher is None)
    extent = await store.dead_letter_extent(selection)
    outcome.selected = extent.count if limit is None else min(limit, extent.count)
    batches = _Batches(store, selection, through=extent.last, lock=republisher is not None)
    try:
        await _replay_batches(
            batches,
            republisher,
            limit=limit,
            max_replays=max_replays,
            progress=progress,
            outcome=outcome,
            action=action,
        )
    except TaskHistoryError as exc:
        exc.add_note(
            f"replay stopped after moving {outcome.done.count}; the rest stay dead letters,"
            " and running it again is safe"
        )
        raise
    finally:
        await batches.close()
    outcome.left = (await store.dead_letter_extent()).count
    return outcome


class _Batches:
    """The claims of a replay in id order, the next one taken while the current is worked on."""

    def __init__(
        self, store: Store, selection: Selection, *, through: int | None, lock: bool
    ) -> None:
        self._store = store
        self._selection = selection
        self._through = through
        self._lock = lock
        self._after = 0
        self._next: asyncio.Task[Claim] | None = None
        self._size = 0
        self.exhausted = through is None

    def prefetch(self, room: int) -> None:
        """Start claiming the next batch of up to `room` letters, unless none can be left."""
        if self._next is None and not self.exhausted and room > 0:
            self._size = min(REPLAY_BATCH, room)
            self._next = asyncio.create_task(
                self._store.claim_dead_letters(
                    self._selection,
                    after=self._after,
                    through=self._through,
                    limit=self._size,
                    lock=self._lock,
                )
            )

    async def take(self) -> Claim | None:
        """The batch prefetched (None if none was); the one after it may be prefetched next."""
        if self._next is None:
            return None
        task, self._next = self._next, None
        claim = await task
        if len(claim.letters) < self._size:
            self.exhausted = True  # fewer than asked: nothing more is free to claim
        if claim.letters:
            self._after = claim.letters[-1].id or self._after
        return claim

    async def close(self) -> None:
        """Give back a batch claimed ahead and not taken."""
        if self._next is not None:
            task, self._next = self._next, None
            task.cancel()  # a claim cut short gives its connection back by itself
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is None:
                await task.result().abandon()


async def _replay_batches(  # noqa: PLR0913  # replay()'s options, passed on
    batches: _Batches,
    republisher: Republisher | None,
    *,
    limit: int | None,
    max_replays: int | None,
    progress: Progress | None,
    outcome: Outcome,
    action: int | None = None,
) -> None:
    def room(in_hand: int = 0) -> int:
        return REPLAY_BATCH if limit is None else limit - outcome.done.count - in_hand

    batches.prefetch(room())
    while (claim := await batches.take()) is not None:
        async with claim:
            due = _due(claim.letters, max_replays, outcome)
            batches.prefetch(room(len(due)))  # claimed while this batch is sent
            if republisher is None:
                sent = due
            else:
                sent, unroutable = await republisher.send(due)
                for item in unroutable:
                    outcome.unroutable.add(item)
                ids = [letter.id for letter in sent if letter.id is not None]
                await claim.delete(ids, action=action)
        for letter in sent:  # committed: these are moved
            outcome.done.add(letter)
        if progress is not None:
            progress(outcome.done.count, outcome.selected)
        batches.prefetch(room())  # if none was, and --limit still leaves room


def _due(
    letters: Sequence[DeadLetter], max_replays: int | None, outcome: Outcome
) -> list[DeadLetter]:
    """The letters to send; those replayed `max_replays` times already are counted and left.

    So are those whose body was kept only in part (refusal_to_replay).
    """
    due = []
    for letter in letters:
        if refusal_to_replay(letter) is not None:
            outcome.not_whole.add(letter)
        elif max_replays is not None and letter.replay_count >= max_replays:
            outcome.at_max_replays.add(letter)
        else:
            due.append(letter)
    return due


async def purge(  # noqa: PLR0913  # each option is one of the command's flags
    store: Store,
    *,
    selection: Selection,
    limit: int | None = None,
    through: int | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    action: int | None = None,
) -> Outcome:
    """Delete the selected dead letters, PURGE_BATCH per transaction, up to id `through`.

    `through` is the newest id the operator was asked about: letters stored since are not
    deleted. A dry run deletes nothing, and shows the first few it would delete. With
    `action`, each batch is counted in that action's record as it commits.
    """
    outcome = Outcome(dry_run=dry_run)
    extent = await store.dead_letter_extent(selection)
    through = extent.last if through is None else through
    outcome.selected = extent.count if limit is None else min(limit, extent.count)
    if dry_run:
        outcome.done.count = outcome.selected
        letters = store.stream_dead_letters(selection, limit=min(SAMPLE_SIZE, outcome.selected))
        outcome.done.sample = [letter async for letter in letters]
    after = 0
    while not dry_run and through is not None:
        room = PURGE_BATCH if limit is None else min(PURGE_BATCH, limit - outcome.done.count)
        if room <= 0:
            break
        deleted, last = await store.purge_dead_letters(
            selection, after=after, through=through, limit=room, action=action
        )
        outcome.done.count += deleted
        if progress is not None:
            progress(outcome.done.count, outcome.selected)
        if deleted < room or last is None:
            break
        after = last
    outcome.left = (await store.dead_letter_extent()).count
    return outcome


async def export(
    store: Store, selection: Selection, *, limit: int | None = None
) -> AsyncGenerator[DeadLetter]:
    """The selected dead letters in id order, streamed: memory stays flat at any number."""
    letters = store.stream_dead_letters(selection, limit=limit)
    try:
        async for letter in letters:
            yield letter
    finally:
        await letters.aclose()
