"""The load a fault schedule runs under: ~300 messages a second, each confirmed or recorded not.

Most are valid events, half of them to a few hot tasks, so that with a cap of 10 entries a
task the cap trims all the time (the first copy of a redelivered event is often gone already);
half carry `created_at`, half get the time they are received. A known share is invalid: bad
JSON, a field the contract refuses, a task that doesn't exist; each earns one dead letter with a
known code. Every message has a message_id, and a valid event's content begins with its id, so
the oracle (exactly_once.py) can find each one's writes. Which message comes next depends on
the random generator's number alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import asyncpg
from aio_pika.abc import AbstractConnection, AbstractExchange
from aio_pika.connection import make_url

from consumer.entries import ContextType
from tests.reliability.exactly_once import Sent

RATE = 300  # messages a second
TICK = 0.1  # seconds; a tick's messages are confirmed together
CAP = 10  # entries a task keeps
HOT_TASKS = 5
COLD_TASKS = 200
HOT_SHARE = 0.5
WITH_CREATED_AT = 0.5
# Each of the three invalid kinds is this share of the messages.
INVALID_SHARE = 0.01
INVALID_JSON, INVALID_EVENT, UNKNOWN_TASK = "invalid_json", "invalid_event", "unknown_task"
PUBLISH_TIMEOUT = 10.0  # seconds for a confirm; longer counts as not confirmed


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message about to be published, and what it must become."""

    id: uuid.UUID
    body: bytes
    routing_key: str
    expected: str | None  # None: stored; else the dead letter's x-error


class Mix:
    """Which message comes next, from a random generator of its own."""

    def __init__(self, rng: random.Random, *, hot: list[uuid.UUID], cold: list[uuid.UUID]) -> None:
        """Events to the tasks `hot` (HOT_SHARE of them) and `cold`, and invalid messages."""
        self._rng = rng
        self._hot = hot
        self._cold = cold
        self._count = 0

    def next(self) -> Outgoing:
        """The next message."""
        rng = self._rng
        self._count += 1
        message_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        draw = rng.random()
        if draw < INVALID_SHARE:
            body = f'{{"id": "{message_id}", "task_id": '.encode()  # cut short
            return Outgoing(message_id, body, "history.agent_turn", INVALID_JSON)
        tasks = self._hot if rng.random() < HOT_SHARE else self._cold
        event: dict[str, object] = {
            "id": str(message_id),
            "task_id": str(rng.choice(tasks)),
            "context_type": rng.choice(list(ContextType)).value,
            "content": f"{message_id} fault schedule, event {self._count}",
        }
        if rng.random() < WITH_CREATED_AT:
            event["created_at"] = datetime.now(UTC).isoformat()
        if rng.random() < 0.3:
            event["metadata"] = {"n": self._count}
        expected: str | None = None
        if draw < 2 * INVALID_SHARE:
            event["context_type"], expected = "gossip", INVALID_EVENT
        elif draw < 3 * INVALID_SHARE:
            event["task_id"], expected = (
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                (UNKNOWN_TASK),
            )
        body = json.dumps(event).encode()
        return Outgoing(message_id, body, f"history.{event['context_type']}", expected)


async def create_tasks(connection: asyncpg.Connection, rng: random.Random) -> Mix:
    """Create the hot and cold tasks, set the cap; the mix of messages for them."""
    hot = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(HOT_TASKS)]
    cold = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(COLD_TASKS)]
    await connection.executemany("INSERT INTO tasks (id) VALUES ($1)", [(t,) for t in hot + cold])
    await connection.execute(
        "UPDATE task_build_history_settings SET max_entries_per_task = $1", CAP
    )
    return Mix(rng, hot=hot, cold=cold)


class Load:
    """Publishes the mix at RATE with confirms until stopped, reconnecting after a broker fault."""

    def __init__(self, url: str, exchange: str, mix: Mix) -> None:
        """Publish to `exchange` on the broker at `url`."""
        self._url = url
        self._exchange = exchange
        self._mix = mix
        self.sent: list[Sent] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; a lost connection is opened again, messages not redone."""
        while not stop.is_set():
            try:
                connection = await connect(self._url)
            except Exception:  # noqa: BLE001  # the broker is down or restarting: try again
                await asyncio.sleep(0.5)
                continue
            try:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.get_exchange(self._exchange, ensure=False)
                await self._publish(exchange, stop)
            except Exception:  # noqa: BLE001, S110  # any broker failure: reconnect and go on
                pass
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 5)

    async def _publish(self, exchange: AbstractExchange, stop: asyncio.Event) -> None:
        """Publish a tick's messages at a time, confirms overlapping; return when one fails."""
        per_tick = round(RATE * TICK)
        due = time.monotonic()
        while not stop.is_set():
            batch = [self._mix.next() for _ in range(per_tick)]
            outcomes = await asyncio.gather(
                *(_confirmed(exchange, message) for message in batch), return_exceptions=True
            )
            for message, outcome in zip(batch, outcomes, strict=True):
                confirmed = outcome if isinstance(outcome, float) else None
                self.sent.append(Sent(message.id, message.expected, confirmed))
            if any(not isinstance(outcome, float) for outcome in outcomes):
                return
            due = max(due + TICK, time.monotonic() - 1)  # behind by a second at most
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def connect(url: str) -> AbstractConnection:
    """A connection to the broker at `url`, or the error; a failed one is closed here.

    aio_pika.connect leaves a connection that failed to the garbage collector, whose clean-up
    needs a running event loop: collected in another thread, it warns of a coroutine never
    awaited.
    """
    connection = aio_pika.Connection(make_url(url))
    try:
        await connection.connect(timeout=5)
    except BaseException:
        await connection.close()
        raise
    return connection


async def _confirmed(exchange: AbstractExchange, message: Outgoing) -> float:
    """Publish one message, persistent, and wait for its confirm; when it came (Unix time)."""
    async with asyncio.timeout(PUBLISH_TIMEOUT):
        await exchange.publish(
            aio_pika.Message(
                message.body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(message.id),
            ),
            routing_key=message.routing_key,
        )
    return time.time()
