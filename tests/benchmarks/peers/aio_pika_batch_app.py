"""Peer: aio-pika-batch's BatchConsumer, writing each batch with one asyncpg statement.

What a developer who picks aio-pika-batch writes, the way its README shows: a BatchConsumer
subclass whose `process_messages` yields one result per message (ACK, or NACK for an event that
doesn't validate), with a pool opened in `on_start`. Each batch's valid events go in one INSERT
over `unnest` arrays, like this project's. It batches by a clock: a batch goes when it holds
`batch_size` messages or `batch_timeout` seconds after its first, here 500 and 50 ms, this
project's defaults, with a prefetch of twice the batch, as its tuning tips advise.

Run by bench_peers from the peers' environment (Python >= 3.12 with aio-pika-batch):

    python -m tests.benchmarks.peers.aio_pika_batch_app --database-url URL --amqp-url URL \
        --queue NAME --queue-arguments JSON [--events N]
"""

# aio-pika-batch is installed only in the peers' environment (it needs Python 3.12), and so is
# untyped here: subclassing its BatchConsumer is subclassing Any.
# mypy: disable-error-code="import-not-found,misc"

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from aio_pika_batch import BatchConsumer, BatchConsumerSettings, MessageResult
from pydantic import ValidationError

from tests.benchmarks.peers.shared import INSERT_MANY, Drain, Event, Row, columns, options, say

OPTIONS = options(__doc__.splitlines()[0] if __doc__ else "")
POOL_SIZE = 2


class HistoryWriter(BatchConsumer[BatchConsumerSettings]):
    """Validates each message of a batch and writes the valid ones in one statement."""

    def __init__(self, settings: BatchConsumerSettings) -> None:
        """A consumer with `settings`; its pool opens in on_start."""
        super().__init__(settings)
        self.pool: Any = None
        self.drain = Drain(OPTIONS.events, done=self.finished)
        self.stopped = asyncio.Event()

    async def on_start(self) -> None:
        """Open the pool."""
        self.pool = await asyncpg.create_pool(
            OPTIONS.database_url, min_size=POOL_SIZE, max_size=POOL_SIZE
        )

    async def on_stop(self) -> None:
        """Close the pool (aio-pika-batch may call this twice)."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()

    def finished(self) -> None:
        """Every event asked for is written."""
        self.stopped.set()

    async def process_messages(
        self, messages: list[AbstractIncomingMessage]
    ) -> AsyncIterator[MessageResult]:
        """Validate each message, write the valid ones in one INSERT, then one result each."""
        self.drain.started()
        results: list[MessageResult] = []
        rows: list[Row] = []
        for message in messages:
            try:
                rows.append(Event.model_validate_json(message.body).row())
            except ValidationError:
                results.append(MessageResult.NACK)
            else:
                results.append(MessageResult.ACK)
        if rows:
            await self.pool.execute(INSERT_MANY, *columns(rows))
        self.drain.written(len(messages))
        for result in results:
            yield result


async def main() -> None:
    """Consume until SIGTERM, or until the events asked for are written."""
    consumer = HistoryWriter(
        BatchConsumerSettings(
            url=OPTIONS.amqp_url,
            queue_name=OPTIONS.queue,
            queue_arguments=OPTIONS.queue_arguments,
            batch_size=OPTIONS.batch_size,
            batch_timeout=OPTIONS.batch_wait_ms / 1000,
            prefetch_count=OPTIONS.prefetch,
        )
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, consumer.finished)
    async with consumer:
        # Connected, the queue declared: aio-pika-batch has no event to wait on for it.
        while not consumer.is_healthy:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        say("consuming")
        await consumer.stopped.wait()


if __name__ == "__main__":
    asyncio.run(main())
