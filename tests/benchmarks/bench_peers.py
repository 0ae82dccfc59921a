"""Benchmark: the peers side by side over one backlog, against the bars the project sets itself.

Run from the repository root on a quiet machine (needs PostgreSQL and RabbitMQ; it makes and
removes its own databases, exchanges and queues); about three minutes:

    .venv/bin/python -m tests.benchmarks.bench_peers [--events 60000] [--json out.json]

Over one backlog (60,000 events over 300 tasks, every task already at the cap, content sizes
like agents send), in one run:

1. Ceiling: a bare aio-pika loop that consumes and acks (every 250, multiple=True), parsing
   JSON and storing nothing; and, for reference, the same loop on aiormq's deliveries, which
   is how the consumer reads them (without aio-pika's per-message objects).
2. Naive peer: what a plain developer writes: per message validate, one INSERT, ack; 100 in
   flight on a pool of 10 connections.
3. This project: `task-history consume` on its defaults, from its first batch to its last.
4. Latency: 200 events/s for 30 s, each for a task of its own, from just before its publish to
   the commit that made it visible (the task's NOTIFY, delivered at commit): p50, p99, max.
5. Database: 500-row batch inserts into a table where every task is at the cap, with the trim
   and without it (bench_trim).
6. Memory: the consumer's peak RSS while it drains the backlog (3).

It prints a table with the ratios and whether each bar is met, and writes it all as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime

import aio_pika
import aiormq.abc
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from consumer.errors import InvalidEventError
from consumer.events import parse_event
from consumer.store import Store
from consumer.topology import Topology
from tests.benchmarks import bench_trim
from tests.benchmarks.bench_drain import (
    backlog,
    ceiling,
    consumer_environment,
    project,
    publish,
)
from tests.benchmarks.common import (
    BACKLOG_OPTIONS,
    Stopwatch,
    amqp_server,
    content,
    database_at_cap,
    declared_topology,
    headed,
    main_queue,
    run_and_report,
)

# The bars of issue 7: (result key, comparison, bar).
BARS = [
    ("project_over_ceiling", ">=", 0.9),
    ("project_over_naive", ">=", 8.0),
    ("latency_p99_ms", "<=", 100.0),
    ("trim_ratio", ">=", 0.5),
    ("project_peak_rss_mb", "<=", 150.0),
]
NAIVE_IN_FLIGHT = 100
NAIVE_INSERT = """
INSERT INTO task_build_history (id, task_id, workspace_id, session_id, context_type, content,
                                metadata, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
ON CONFLICT (id) DO NOTHING
"""
LATENCY_RATE = 200
LATENCY_SECONDS = 30


async def bare_aiormq(url: str, topology: Topology, total: int) -> float:
    """Seconds the ceiling's loop takes on aiormq's deliveries, without aio-pika's messages.

    The consumer reads deliveries this way (consumer.broker.Received), so this, not the
    aio-pika loop, is the most it could do here.
    """
    connection = await aio_pika.connect(url)
    channel = await (await connection.channel()).get_underlay_channel()
    await channel.basic_qos(prefetch_count=1000)
    clock = Stopwatch(total)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        clock.arrived()
        json.loads(message.body)
        if (seen := clock.counted()) % 250 == 0 or seen == total:
            tag = getattr(message.delivery, "delivery_tag", 0)  # a Basic.Deliver's
            await channel.basic_ack(tag, multiple=True)
        clock.finish()

    await channel.basic_consume(topology.queue, on_message, no_ack=False)
    elapsed = await clock.seconds()
    await connection.close()
    return elapsed


async def naive(database_url: str, url: str, topology: Topology, total: int) -> float:
    """Seconds a per-message consumer takes to drain `total`: validate, INSERT, ack each."""
    pool = await asyncpg.create_pool(database_url, min_size=10, max_size=10)
    clock = Stopwatch(total)

    async def on_message(message: AbstractIncomingMessage) -> None:
        clock.arrived()
        try:
            entry = parse_event(
                message.body, message_id=message.message_id, received_at=datetime.now(UTC)
            )
        except InvalidEventError:
            await message.reject()
        else:
            await pool.execute(NAIVE_INSERT, *entry)
            await message.ack()
        clock.counted()
        clock.finish()

    async with main_queue(url, topology, NAIVE_IN_FLIGHT) as queue:
        await queue.consume(on_message)
        elapsed = await clock.seconds()
    await pool.close()
    return elapsed


async def latency(database_url: str, url: str, topology: Topology) -> list[float]:
    """Milliseconds from publish to visible, for LATENCY_RATE events/s over LATENCY_SECONDS."""
    count = LATENCY_RATE * LATENCY_SECONDS
    tasks = [uuid.uuid4() for _ in range(count)]
    async with Store(database_url, max_connections=1) as store:
        await store.create_tasks(tasks)
    published: dict[str, float] = {}
    visible: dict[str, float] = {}
    all_visible = asyncio.Event()
    listener = await asyncpg.connect(database_url)

    def on_notify(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        visible.setdefault(json.loads(payload)["task_id"], time.perf_counter())
        if len(visible) == count:
            all_visible.set()

    await listener.add_listener("task_build_history", on_notify)
    log = tempfile.TemporaryFile()  # noqa: SIM115  # closed in the finally below
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "consume",
        env=consumer_environment(database_url, url, topology),
        stdout=log,
        stderr=log,
    )
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topology.exchange)
    rng = random.Random(200)
    try:
        await asyncio.sleep(3)  # the consumer is up and subscribed
        started = time.perf_counter()
        for n, task in enumerate(tasks):
            # Paced to the rate: each event leaves at its own moment, not in bursts.
            await asyncio.sleep(max(0.0, started + n / LATENCY_RATE - time.perf_counter()))
            body = json.dumps(
                {"task_id": str(task), "context_type": "agent_turn", "content": content(rng)}
            ).encode()
            published[str(task)] = time.perf_counter()
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="history.agent_turn",
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_visible.wait(), 30)
    finally:
        await connection.close()
        if process.returncode is None:
            process.terminate()
        await process.wait()
        await listener.close()
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
    if len(visible) < count:
        raise SystemExit(
            f"benchmark: only {len(visible)} of {count} events became visible:\n{output[-2000:]}"
        )
    return [(visible[task] - published[task]) * 1000 for task in published]


async def run(events: int, tasks: int, trim_batches: int) -> dict[str, object]:
    """Every measurement, one after the other, on fresh databases and names."""
    rng = random.Random(60)
    url = amqp_server()
    task_ids = [uuid.uuid4() for _ in range(tasks)]
    bodies = backlog(rng, task_ids, events)
    async with declared_topology(url) as topology:
        await publish(url, topology, bodies)
        bare = await ceiling(url, topology, events)
        await publish(url, topology, bodies)
        raw = await bare_aiormq(url, topology, events)
        async with database_at_cap("th_bench_naive", task_ids) as database_url:
            await publish(url, topology, bodies)
            plain = await naive(database_url, url, topology, events)
        async with database_at_cap("th_bench_project", task_ids) as database_url:
            await publish(url, topology, bodies)
            ours, peak = await project(database_url, url, topology, events)
        async with database_at_cap("th_bench_latency", []) as database_url:
            latencies = sorted(await latency(database_url, url, topology))
    trim = await bench_trim.run(trim_batches)
    result = headed(
        "peers",
        events=events,
        tasks=tasks,
        ceiling_events_per_s=round(events / bare),
        bare_aiormq_events_per_s=round(events / raw),
        naive_events_per_s=round(events / plain),
        project_events_per_s=round(events / ours),
        project_over_ceiling=round(bare / ours, 3),
        project_over_naive=round(plain / ours, 2),
        project_over_bare_aiormq=round(raw / ours, 3),
        latency_rate_per_s=LATENCY_RATE,
        latency_p50_ms=round(statistics.median(latencies), 1),
        latency_p99_ms=round(latencies[int(len(latencies) * 0.99) - 1], 1),
        latency_max_ms=round(latencies[-1], 1),
        trim_rows_per_s_with=trim["rows_per_s_with_trim"],
        trim_rows_per_s_without=trim["rows_per_s_without_trim"],
        trim_ratio=trim["ratio"],
        project_peak_rss_mb=round(peak, 1),
    )
    result["bars_met"] = verdicts(result)
    return result


def verdicts(result: dict[str, object]) -> dict[str, bool]:
    """Whether each bar is met."""
    met = {}
    for key, comparison, bar in BARS:
        value = float(str(result[key]))
        met[key] = value >= bar if comparison == ">=" else value <= bar
    return met


def table(result: dict[str, object]) -> list[str]:
    """The figures as printed: a Markdown table with the ratios and whether each bar is met."""
    met = result["bars_met"]
    assert isinstance(met, dict)

    def bar(key: str, text: str) -> str:
        return f"{text}: {'meets' if met[key] else 'MISSES'}"

    r = result
    rows = [
        ("ceiling: bare aio-pika consume + ack", f"{r['ceiling_events_per_s']} events/s", "", ""),
        (
            "the same loop on aiormq's deliveries",
            f"{r['bare_aiormq_events_per_s']} events/s",
            "",
            "",
        ),
        ("naive: validate, INSERT, ack per message", f"{r['naive_events_per_s']} events/s", "", ""),
        (
            "`task-history consume`",
            f"{r['project_events_per_s']} events/s",
            f"{r['project_over_ceiling']} of the ceiling",
            bar("project_over_ceiling", "≥ 0.9"),
        ),
        ("", "", f"{r['project_over_naive']}x naive", bar("project_over_naive", "≥ 8x")),
        ("", "", f"{r['project_over_bare_aiormq']} of the aiormq loop", ""),
        (
            f"latency at {r['latency_rate_per_s']} events/s",
            (
                f"p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms,"
                f" max {r['latency_max_ms']} ms"
            ),
            "",
            bar("latency_p99_ms", "p99 ≤ 100 ms"),
        ),
        (
            "500-row inserts, every task at the cap",
            (
                f"{r['trim_rows_per_s_with']} rows/s with the trim,"
                f" {r['trim_rows_per_s_without']} without"
            ),
            str(r["trim_ratio"]),
            bar("trim_ratio", "≥ 0.5"),
        ),
        (
            "consumer peak RSS while draining",
            f"{r['project_peak_rss_mb']} MB",
            "",
            bar("project_peak_rss_mb", "≤ 150 MB"),
        ),
    ]
    return [
        f"{r['events']} events over {r['tasks']} tasks, all at the cap; {r['machine']}",
        "",
        "| what | figure | ratio | bar |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def main() -> None:
    """Parse arguments, run, print the table, and write JSON when asked."""
    options = {**BACKLOG_OPTIONS, "--trim-batches": {"type": int, "default": 60}}
    run_and_report(__doc__, options, run, table)


if __name__ == "__main__":
    main()
