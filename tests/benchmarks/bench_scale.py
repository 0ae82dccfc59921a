"""Benchmark: drain one backlog with 1, 2 and 4 consumer processes sharing the quorum queue.

Run from the repository root (needs PostgreSQL and RabbitMQ; it makes and removes its own
database, exchanges and queues), on a quiet machine:

    .venv/bin/python -m tests.benchmarks.bench_scale [--events 60000] [--json out.json]

For each replica count the same backlog (every task already at the cap, as in bench_drain) is
published, then that many `task-history consume` processes start together on their defaults.
The rate counts the steady state only, read from their logs: the events of the batches that
started after the last replica began consuming, over the time from then to the end of the last
batch (before that, replicas still starting take CPU from the ones already draining). Beside
the rate it records the consumers' own CPU time and how busy the whole machine was meanwhile:
consumers well below one core each while the machine is saturated means the bottleneck is the
servers (or the core count), not the consumer.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from consumer.topology import Topology
from tests.benchmarks.bench_drain import (
    backlog,
    batch_span,
    consumer_environment,
    logged_batches,
    publish,
    start_consumer,
    until_consumed,
)
from tests.benchmarks.common import (
    BACKLOG_OPTIONS,
    amqp_server,
    database_at_cap,
    declared_topology,
    headed,
    run_and_report,
)


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine so far, from /proc/stat."""
    fields = [int(n) for n in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


async def drain(
    database_url: str, url: str, topology: Topology, total: int, replicas: int
) -> dict[str, float]:
    """Start `replicas` consumers on the backlog; the drain's seconds and CPU figures."""
    environment = consumer_environment(database_url, url, topology)
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"consumer-{n}.log" for n in range(replicas)]
        busy_before, total_before = cpu_ticks()
        processes = [start_consumer(environment, log) for log in logs]
        try:
            await until_consumed(processes, logs, total)
        finally:
            busy_after, total_after = cpu_ticks()
            consumer_cpu = 0.0
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                _, _, usage = os.wait4(process.pid, 0)  # noqa: ASYNC222  # signalled: exits soon
                consumer_cpu += usage.ru_utime + usage.ru_stime
        batches = [b for log in logs for b in logged_batches(log)]
        ready = max(_consuming_since(log) for log in logs)
    # Steady state only: from the moment the last replica started consuming. Before that,
    # the others drain while it is still starting up (and takes CPU from them).
    spans = [(*batch_span(b), int(str(b["size"]))) for b in batches]
    counted = [(start, end, size) for start, end, size in spans if start >= ready]
    if not counted:
        sys.exit(
            f"benchmark: the backlog was drained before {replicas} replicas were all up;"
            " raise --events"
        )
    seconds = (max(end for _, end, _ in counted) - ready).total_seconds()
    return {
        "events": sum(size for _, _, size in counted),
        "seconds": seconds,
        "consumer_cpu_seconds": consumer_cpu,
        "machine_busy": (busy_after - busy_before) / max(1, total_after - total_before),
    }


def _consuming_since(log: Path) -> datetime:
    """When a consumer logged that it was consuming."""
    for line in log.read_text().splitlines():
        if line.startswith("{") and (entry := json.loads(line)).get("event") == "consuming":
            return datetime.fromisoformat(str(entry["timestamp"]))
    sys.exit(f"benchmark: {log.name} never started consuming")


async def run(events: int, tasks: int, replicas: list[int]) -> dict[str, object]:
    """Prepare the database at the cap, then drain the same backlog with each replica count."""
    rng = random.Random(60)
    url = amqp_server()
    task_ids = [uuid.uuid4() for _ in range(tasks)]
    rows: list[dict[str, object]] = []
    async with (
        database_at_cap("th_bench_scale", task_ids) as database_url,
        declared_topology(url) as topology,
    ):
        for count in replicas:
            await publish(url, topology, backlog(rng, task_ids, events))
            started = time.perf_counter()
            figures = await drain(database_url, url, topology, events, count)
            wall = time.perf_counter() - started
            rows.append(
                {
                    "replicas": count,
                    "events_per_s": round(figures["events"] / figures["seconds"]),
                    "events_measured": int(figures["events"]),
                    "consumer_cpu_per_replica": round(
                        figures["consumer_cpu_seconds"] / count / wall, 2
                    ),
                    "machine_busy": round(figures["machine_busy"], 2),
                }
            )
    return headed("scale", events=events, tasks=tasks, runs=rows)


def table(result: dict[str, object]) -> list[str]:
    """The figures as printed: one line per replica count, with the speed-up over the first."""
    runs = result["runs"]
    assert isinstance(runs, list)
    base = runs[0]["events_per_s"]
    lines = [
        f"drain {result['events']} events over {result['tasks']} tasks, all at the cap",
        "  replicas   events/s   speed-up   consumer CPU (cores each)   machine busy",
    ]
    lines += [
        f"  {r['replicas']:>8}   {r['events_per_s']:>8}   {r['events_per_s'] / base:>8.2f}"
        f"   {r['consumer_cpu_per_replica']:>25}   {r['machine_busy']:>12.0%}"
        for r in runs
    ]
    return lines


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    options = {
        **BACKLOG_OPTIONS,
        "--replicas": {"type": int, "nargs": "+", "default": [1, 2, 4]},
    }
    run_and_report(__doc__, options, run, table)


if __name__ == "__main__":
    main()
