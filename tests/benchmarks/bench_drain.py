"""Benchmark: drain a 60,000-event backlog over 300 tasks at the cap; the consumer vs a bare loop.

Run from the repository root (needs PostgreSQL and RabbitMQ; it makes and removes its own
database, exchanges and queues):

    .venv/bin/python -m tests.benchmarks.bench_drain [--events 60000] [--json out.json]

1. Ceiling: a bare aio-pika loop that consumes the backlog, parses each body as JSON and acks
   every 250 with multiple=True, storing nothing: the most Python can do with the broker here.
2. This project: `task-history consume` with its defaults, in a process of its own, over the
   same backlog published again; drain time from the start of its first batch to the end of its
   last, read from its own log, so process start-up is not counted.
Every task already holds 100 entries before the drain, so every batch trims.

`--text words` makes the contents words of a vocabulary, of the same lengths, instead of one
letter repeated (an index on the text then has real words to file). `--content-index` adds
one, before the drain, to see what it costs every insert: `trigram` (pg_trgm's GIN index,
which serves `content ILIKE '%text%'`), or `words` (a GIN index of to_tsvector('simple',
content), which serves a search of whole words).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from consumer.store import Store
from consumer.topology import Topology
from tests.benchmarks.common import (
    BACKLOG_OPTIONS,
    CONTEXT_TYPES,
    Stopwatch,
    Vocabulary,
    amqp_server,
    content,
    database_at_cap,
    declared_topology,
    exit_unless_at_cap,
    headed,
    main_queue,
    metadata,
    run_and_report,
)
from tests.helpers import admin

ACK_EVERY = 250
PREFETCH = 1000


def backlog(
    rng: random.Random,
    tasks: list[uuid.UUID],
    events: int,
    *,
    words: Vocabulary | None = None,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> list[bytes]:
    """Event bodies as agents publish them, round-robin over the tasks, with `new_id` ids."""
    return [
        json.dumps(
            {
                "id": str(new_id()),
                "task_id": str(tasks[n % len(tasks)]),
                "context_type": rng.choice(CONTEXT_TYPES),
                "content": content(rng) if words is None else words.text(rng),
                "metadata": metadata(rng, n),
            }
        ).encode()
        for n in range(events)
    ]


CONTENT_INDEXES = {
    "none": (),
    "trigram": (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        "CREATE INDEX bench_content ON task_build_history USING gin (content gin_trgm_ops)",
    ),
    "words": (
        (
            "CREATE INDEX bench_content ON task_build_history"
            " USING gin (to_tsvector('simple', content))"
        ),
    ),
}


async def publish(url: str, topology: Topology, bodies: list[bytes]) -> None:
    """Publish persistent messages with confirms, 500 in flight."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topology.exchange)
    for start in range(0, len(bodies), 500):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key="history.agent_turn",
                )
                for body in bodies[start : start + 500]
            )
        )
    await connection.close()


async def ceiling(url: str, topology: Topology, total: int) -> float:
    """Seconds a bare consume, parse and ack loop takes to drain `total` messages."""
    clock = Stopwatch(total)

    async def on_message(message: AbstractIncomingMessage) -> None:
        clock.arrived()
        json.loads(message.body)
        if (seen := clock.counted()) % ACK_EVERY == 0 or seen == total:
            await message.ack(multiple=True)
        clock.finish()

    async with main_queue(url, topology, PREFETCH) as queue:
        await queue.consume(on_message)
        return await clock.seconds()


def consumer_environment(
    database_url: str, url: str, topology: Topology, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The consumer's defaults but for this run's names, a line per batch and `extra`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASK_HISTORY_")}
    environment |= {
        "TASK_HISTORY_DATABASE_URL": database_url,
        "TASK_HISTORY_AMQP_URL": url,
        "TASK_HISTORY_EXCHANGE": topology.exchange,
        "TASK_HISTORY_QUEUE": topology.queue,
        "TASK_HISTORY_DEAD_LETTER_EXCHANGE": topology.dead_letter_exchange,
        "TASK_HISTORY_DEAD_LETTER_QUEUE": topology.dead_letter_queue,
        "TASK_HISTORY_RETRY_QUEUE": topology.retry_queue,
        "TASK_HISTORY_LOG_FORMAT": "json",
        "TASK_HISTORY_BATCH_LOG_SECONDS": "0",  # the rate is read from each batch's line
        "TASK_HISTORY_METRICS_PORT": "0",
    }
    return environment | (extra or {})


def start_consumer(environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`task-history consume` in a process of its own, logging to `log`."""
    with log.open("wb") as output:
        return subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "consumer", "consume"],
            env=environment,
            stdout=output,
            stderr=output,
        )


async def until_consumed(
    processes: list[subprocess.Popen[bytes]], logs: list[Path], total: int
) -> None:
    """Wait until the consumers' logs count `total` events in batches; end if one exits."""
    while sum(int(str(b["size"])) for log in logs for b in logged_batches(log)) < total:
        if any(process.poll() is not None for process in processes):
            sys.exit("benchmark: a consumer exited:\n" + logs[0].read_text())
        await asyncio.sleep(0.5)


def batch_span(batch: dict[str, object]) -> tuple[datetime, datetime]:
    """When a logged batch started and ended: it is logged at its end, with its length in ms."""
    ended = datetime.fromisoformat(str(batch["timestamp"]))
    return ended - timedelta(milliseconds=float(str(batch["ms"]))), ended


def peak_rss_mb(pid: int) -> float:
    """The most resident memory a process has had, in MB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def project(
    database_url: str,
    url: str,
    topology: Topology,
    total: int,
    *,
    extra: dict[str, str] | None = None,
) -> tuple[float, float]:
    """`task-history consume` draining `total` events: (seconds, peak RSS in MB).

    The seconds run from the start of its first batch to the end of its last, per its log.
    """
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "consumer.log"
        process = start_consumer(consumer_environment(database_url, url, topology, extra), log)
        try:
            await until_consumed([process], [log], total)
            peak = peak_rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        batches = logged_batches(log)
    (started, _), (_, ended) = batch_span(batches[0]), batch_span(batches[-1])
    return (ended - started).total_seconds(), peak


def logged_batches(log: Path) -> list[dict[str, object]]:
    """The batch lines of a consumer's JSON log, in order."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "batch"]


async def run(events: int, tasks: int, text: str, content_index: str) -> dict[str, object]:
    """Prepare the database at the cap, then drain the backlog twice: bare loop, then project."""
    rng = random.Random(60)
    url = amqp_server()
    task_ids = [uuid.uuid4() for _ in range(tasks)]
    words = Vocabulary(rng) if text == "words" else None
    async with (
        database_at_cap("th_bench_drain", task_ids) as database_url,
        declared_topology(url) as topology,
    ):
        await admin(database_url, *CONTENT_INDEXES[content_index], "VACUUM ANALYZE")
        await publish(url, topology, backlog(rng, task_ids, events, words=words))
        bare = await ceiling(url, topology, events)
        await publish(url, topology, backlog(rng, task_ids, events, words=words))
        ours, peak = await project(database_url, url, topology, events)
        async with Store(database_url, max_connections=1) as store:
            await exit_unless_at_cap(store, tasks)
    return headed(
        "drain",
        events=events,
        tasks=tasks,
        text=text,
        content_index=content_index,
        ceiling_events_per_s=round(events / bare),
        project_events_per_s=round(events / ours),
        ratio=round(bare / ours, 3),
        project_peak_rss_mb=round(peak, 1),
    )


def table(result: dict[str, object]) -> list[str]:
    """The figures as printed."""
    return [
        (
            f"drain {result['events']} events over {result['tasks']} tasks, all at the cap"
            f" (text: {result['text']}, index on the text: {result['content_index']})"
        ),
        f"  bare aio-pika consume+ack (ceiling)  {result['ceiling_events_per_s']:>8} events/s",
        f"  task-history consume                 {result['project_events_per_s']:>8} events/s",
        f"  project / ceiling                    {result['ratio']:>8}",
        f"  consumer peak RSS                    {result['project_peak_rss_mb']:>8} MB",
    ]


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    options = BACKLOG_OPTIONS | {
        "--text": {"choices": ["letters", "words"], "default": "letters"},
        "--content-index": {"choices": list(CONTENT_INDEXES), "default": "none"},
    }
    run_and_report(__doc__, options, run, table)


if __name__ == "__main__":
    main()
