"""Peer: a FastStream 0.7 RabbitMQ subscriber that writes each event with asyncpg.

What a developer who picks FastStream writes, the way its documentation shows: a RabbitBroker,
an asyncpg pool made at start-up and kept in the application context, a subscriber whose
argument is a pydantic model (FastStream decodes and validates the JSON), one INSERT per message.
FastStream acks after the handler returns and rejects when it raises. It has no batching for
RabbitMQ. Per-message log lines are moved to debug (the broker's `log_level`), as one would at
this volume; the prefetch is 100, the pool 10 connections, as for the naive consumer.

Run by bench_peers from the peers' environment (Python >= 3.10 with faststream[rabbit]):

    python -m tests.benchmarks.peers.faststream_app --database-url URL --amqp-url URL \
        --queue NAME [--events N]
"""

# FastStream is installed only in the peers' environment, and ships no stubs for its decorators.
# mypy: disable-error-code="import-not-found,untyped-decorator"

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import asyncpg
from faststream import Context, ContextRepo, FastStream
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue

from tests.benchmarks.peers.shared import INSERT_ONE, Drain, Event, options, say

OPTIONS = options(__doc__.splitlines()[0] if __doc__ else "")
POOL_SIZE = 10

broker = RabbitBroker(
    OPTIONS.amqp_url,
    default_channel=Channel(prefetch_count=OPTIONS.prefetch),
    log_level=logging.DEBUG,
)
app = FastStream(broker)
drain = Drain(OPTIONS.events, done=app.exit)


@app.on_startup
async def connect_database(context: ContextRepo) -> None:
    """Open the pool and keep it in the context, for the handler."""
    pool = await asyncpg.create_pool(OPTIONS.database_url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    context.set_global("db", pool)


@app.after_startup
async def announce() -> None:
    """Tell the benchmark the subscription is on."""
    say("consuming")


@app.on_shutdown
async def close_database(db: Annotated[asyncpg.Pool, Context()]) -> None:
    """Close the pool."""
    await db.close()


@broker.subscriber(RabbitQueue(OPTIONS.queue, queue_type=QueueType.QUORUM, declare=False))
async def store(event: Event, db: Annotated[asyncpg.Pool, Context()]) -> None:
    """Write one event."""
    drain.started()
    await db.execute(INSERT_ONE, *event.row())
    drain.written()


if __name__ == "__main__":
    asyncio.run(app.run())
