"""Benchmark: the consumer's peak memory with the largest messages a publisher can send.

Run from the repository root (needs PostgreSQL and RabbitMQ; it makes and removes its own
database, exchanges and queues):

    .venv/bin/python -m tests.benchmarks.bench_memory [--scenarios oversized largest padded]
        [--source DIR] [--json out.json]

Each scenario queues its messages first, then starts `task-history consume` with its defaults in
a process of its own and waits until every message is a row or a dead letter; the figure is the
process's peak resident memory (VmHWM), and the time it took.

- oversized: six 30 MiB bodies (no event can be that large) ahead of 300 valid events;
- largest: 2,000 of the largest valid events: 65,536 characters of content that take four
  bytes each in UTF-8, and metadata of almost 64 KiB;
- padded: 600 valid events padded with an unknown field to just under 1 MiB each.

`--source DIR` runs the consumer of another checkout (say, an earlier commit unpacked with `git
archive`), migrating the database with its own migrations: a before and after on one machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from consumer.settings import load_settings
from consumer.topology import Topology
from tests.benchmarks.common import (
    amqp_server,
    declared_topology,
    headed,
    run_and_report,
    scratch_database,
)
from tests.harness import REPOSITORY, count_dead_letters, count_rows, settings_environment

MIB = 1 << 20
TASKS = 25  # 80 events each at most: under the cap, so every one stays a row
# Four bytes in UTF-8, one character: the most a character of content can weigh.
WIDE = "\U0001f600"


def _event(task: uuid.UUID, n: int, **fields: object) -> bytes:
    body = {"task_id": str(task), "context_type": "agent_turn", "content": f"event {n}", **fields}
    return json.dumps(body, ensure_ascii=False).encode()


def oversized(tasks: list[uuid.UUID]) -> tuple[list[bytes], int, int]:
    """Six 30 MiB bodies, then 300 valid events: (bodies, rows expected, letters expected)."""
    bodies = [b"x" * (30 * MIB) for _ in range(6)]
    bodies += [_event(tasks[n % len(tasks)], n) for n in range(300)]
    return bodies, 300, 6


def largest(tasks: list[uuid.UUID]) -> tuple[list[bytes], int, int]:
    """2,000 events of 65,536 four-byte characters and almost 64 KiB of metadata."""
    metadata = {"log": "m" * (64 * 1024 - 20)}
    bodies = [
        _event(tasks[n % len(tasks)], n, content=f"{n} " + WIDE * 65_530, metadata=metadata)
        for n in range(2_000)
    ]
    return bodies, 2_000, 0


def padded(tasks: list[uuid.UUID]) -> tuple[list[bytes], int, int]:
    """600 valid events padded with an unknown field to just under 1 MiB."""
    pad = "p" * (MIB - 300)
    return [_event(tasks[n % len(tasks)], n, padding=pad) for n in range(600)], 600, 0


SCENARIOS: dict[str, Callable[[list[uuid.UUID]], tuple[list[bytes], int, int]]] = {
    "oversized": oversized,
    "largest": largest,
    "padded": padded,
}


async def publish(url: str, topology: Topology, bodies: list[bytes]) -> None:
    """Publish every body to the history exchange, persistent, confirmed in windows of 20."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.exchange)
        for start in range(0, len(bodies), 20):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key="history.agent_turn",
                    )
                    for body in bodies[start : start + 20]
                )
            )
    finally:
        await connection.close()


def peak_rss_mb(pid: int) -> float:
    """The highest resident memory a process has had, in MB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


async def migrate(database_url: str, source: Path) -> None:
    """`task-history migrate --skip-broker` of the checkout at `source`: the database only."""
    environment = {**os.environ, "TASK_HISTORY_DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumer", "migrate", "--skip-broker", cwd=source, env=environment
    )
    if await process.wait() != 0:
        raise RuntimeError("migrate failed")


async def run_scenario(name: str, source: Path) -> dict[str, Any]:
    """One scenario: queue its messages, drain them with a consumer; its peak RSS and time."""
    url = amqp_server()
    async with scratch_database("th_bench_memory") as database_url, declared_topology(url) as names:
        await migrate(database_url, source)
        tasks = [uuid.uuid4() for _ in range(TASKS)]
        sql = await asyncpg.connect(database_url)
        try:
            await sql.executemany("INSERT INTO tasks (id) VALUES ($1)", [(t,) for t in tasks])
        finally:
            await sql.close()
        bodies, rows, letters = SCENARIOS[name](tasks)
        queued_mb = sum(len(body) for body in bodies) / MIB
        await publish(url, names, bodies)
        del bodies
        settings = load_settings(
            database_url=database_url,
            amqp_url=url,
            exchange=names.exchange,
            queue=names.queue,
            dead_letter_exchange=names.dead_letter_exchange,
            dead_letter_queue=names.dead_letter_queue,
            retry_queue=names.retry_queue,
            metrics_port=0,
            expire_interval_seconds=0,
            log_format="json",
        )
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(  # this interpreter, this repository
                [sys.executable, "-m", "consumer", "consume"],
                cwd=source,
                env=settings_environment(settings),
                stdout=log,
                stderr=log,
            )
            started = time.monotonic()
            try:
                while (
                    await count_rows(database_url) < rows
                    or await count_dead_letters(database_url) < letters
                ):
                    if process.poll() is not None:
                        log.seek(0)
                        raise RuntimeError(f"the consumer exited:\n{log.read().decode()[-3000:]}")
                    await asyncio.sleep(0.2)
                seconds = time.monotonic() - started
                peak = peak_rss_mb(process.pid)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    return {
        "scenario": name,
        "queued_mb": round(queued_mb, 1),
        "rows": rows,
        "dead_letters": letters,
        "peak_rss_mb": round(peak, 1),
        "seconds": round(seconds, 1),
    }


async def run(scenarios: list[str], source: str | None) -> dict[str, object]:
    """Every scenario asked for, one after the other."""
    where = Path(source).resolve() if source else REPOSITORY
    results = [await run_scenario(name, where) for name in scenarios]
    return headed("memory", source=str(where), results=results)


def table(result: dict[str, object]) -> list[str]:
    """The figures as a Markdown table."""
    lines = [
        "| scenario | queued | rows | dead letters | peak RSS | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    results: Any = result["results"]
    lines += [
        f"| {r['scenario']} | {r['queued_mb']:,} MB | {r['rows']:,} | {r['dead_letters']}"
        f" | {r['peak_rss_mb']} MB | {r['seconds']} s |"
        for r in results
    ]
    return lines


if __name__ == "__main__":
    run_and_report(
        __doc__,
        {
            "--scenarios": {"nargs": "+", "default": list(SCENARIOS), "choices": list(SCENARIOS)},
            "--source": {"default": None, "help": "run the consumer of this checkout instead"},
        },
        run,
        table,
    )
