"""Peer: the naive consumer, what a plain developer writes: per message validate, INSERT, ack.

aio-pika's consume callback, the project's own validation (consumer.events.parse_event), one
INSERT per message on a pool of 10 connections, 100 messages in flight (the prefetch). Run by
bench_peers with the project's interpreter:

    .venv/bin/python -m tests.benchmarks.peers.naive_app --database-url URL --amqp-url URL \
        --queue NAME [--events N]
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from consumer.errors import InvalidEventError
from consumer.events import parse_event
from tests.benchmarks.peers.shared import INSERT_ONE, Drain, options, say

POOL_SIZE = 10


async def main() -> None:
    """Consume until SIGTERM, or until the events asked for are written."""
    arguments = options(__doc__.splitlines()[0] if __doc__ else "")
    stop = asyncio.Event()
    drain = Drain(arguments.events, done=stop.set)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pool = await asyncpg.create_pool(arguments.database_url, min_size=POOL_SIZE, max_size=POOL_SIZE)

    async def on_message(message: AbstractIncomingMessage) -> None:
        drain.started()
        try:
            entry = parse_event(
                message.body, message_id=message.message_id, received_at=datetime.now(UTC)
            )
        except InvalidEventError:
            await message.reject()
        else:
            await pool.execute(INSERT_ONE, *entry)
            await message.ack()
        drain.written()

    connection = await aio_pika.connect(arguments.amqp_url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=arguments.prefetch)
        queue = await channel.get_queue(arguments.queue)
        await queue.consume(on_message)
        say("consuming")
        await stop.wait()
    finally:
        await connection.close()
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
