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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from consumer.broker import Broker
from consumer.store import Store
from consumer.topology import Topology
from tests.benchmarks.common import (
    CONTEXT_TYPES,
    amqp_server,
    content,
    fill_to_cap,
    machine,
    metadata,
    now_iso,
    report,
    scratch_database,
)

ACK_EVERY = 250
PREFETCH = 1000


def backlog(rng: random.Random, tasks: list[uuid.UUID], events: int) -> list[bytes]:
    """Event bodies as agents publish them, round-robin over the tasks."""
    return [
        json.dumps(
            {
                "id": str(uuid.uuid4()),
                "task_id": str(tasks[n % len(tasks)]),
                "context_type": rng.choice(CONTEXT_TYPES),
                "content": content(rng),
                "metadata": metadata(rng, n),
            }
        ).encode()
        for n in range(events)
    ]


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
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.get_queue(topology.queue)
    done = asyncio.Event()
    seen = 0
    first = 0.0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal seen, first
        if seen == 0:
            first = time.perf_counter()
        json.loads(message.body)
        seen += 1
        if seen % ACK_EVERY == 0 or seen == total:
            await message.ack(multiple=True)
        if seen == total:
            done.set()

    await queue.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - first
    await connection.close()
    return elapsed


def consumer_environment(database_url: str, url: str, topology: Topology) -> dict[str, str]:
    """The consumer's defaults, but for this run's database and names."""
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
        "TASK_HISTORY_METRICS_PORT": "0",
    }
    return environment


def peak_rss_mb(pid: int) -> float:
    """The most resident memory a process has had, in MB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def project(
    database_url: str, url: str, topology: Topology, total: int
) -> tuple[float, float]:
    """`task-history consume` draining `total` events: (seconds, peak RSS in MB).

    The seconds run from the start of its first batch to the end of its last, per its log.
    """
    with tempfile.NamedTemporaryFile("w+b", suffix=".log") as log:
        process = subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "consumer", "consume"],
            env=consumer_environment(database_url, url, topology),
            stdout=log,
            stderr=log,
        )
        try:
            while sum(int(str(b["size"])) for b in _batches(Path(log.name))) < total:
                if process.poll() is not None:
                    sys.exit(f"benchmark: the consumer exited:\n{Path(log.name).read_text()}")
                await asyncio.sleep(0.5)
            peak = peak_rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        batches = _batches(Path(log.name))
    first, last = batches[0], batches[-1]
    started = datetime.fromisoformat(str(first["timestamp"])) - timedelta(
        milliseconds=float(str(first["ms"]))
    )
    return (datetime.fromisoformat(str(last["timestamp"])) - started).total_seconds(), peak


def _batches(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "batch"]


async def run(events: int, tasks_count: int) -> dict[str, object]:
    """Prepare the database at the cap, then drain the backlog twice: bare loop, then project."""
    rng = random.Random(60)
    url = amqp_server()
    topology = Topology.named(f"th_bench_{uuid.uuid4().hex[:8]}")
    async with scratch_database("th_bench_drain") as database_url:
        tasks = [uuid.uuid4() for _ in range(tasks_count)]
        await fill_to_cap(database_url, tasks)
        async with Broker(url, topology=topology) as broker:
            await broker.declare()
        try:
            await publish(url, topology, backlog(rng, tasks, events))
            bare = await ceiling(url, topology, events)
            await publish(url, topology, backlog(rng, tasks, events))
            ours, peak = await project(database_url, url, topology, events)
            async with Store(database_url, max_connections=1) as store:
                sizes = await store.pool.fetch(
                    "SELECT count(*) AS n FROM task_build_history GROUP BY task_id"
                )
            if {r["n"] for r in sizes} != {100} or len(sizes) != tasks_count:
                sys.exit("benchmark: tasks are not exactly at the cap; the figures are void")
        finally:
            async with Broker(url, topology=topology) as broker:
                await broker.delete()
    return {
        "benchmark": "drain",
        "when": now_iso(),
        "machine": machine(),
        "events": events,
        "tasks": tasks_count,
        "ceiling_events_per_s": round(events / bare),
        "project_events_per_s": round(events / ours),
        "ratio": round(bare / ours, 3),
        "project_peak_rss_mb": round(peak, 1),
    }


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    result = asyncio.run(run(args.events, args.tasks))
    report(
        result,
        [
            f"drain {result['events']} events over {result['tasks']} tasks, all at the cap",
            f"  bare aio-pika consume+ack (ceiling)  {result['ceiling_events_per_s']:>8} events/s",
            f"  task-history consume                 {result['project_events_per_s']:>8} events/s",
            f"  project / ceiling                    {result['ratio']:>8}",
            f"  consumer peak RSS                    {result['project_peak_rss_mb']:>8} MB",
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
