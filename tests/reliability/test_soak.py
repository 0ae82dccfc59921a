"""Soak: a steady stream with bad messages mixed in; memory, connections and the queue stay flat.

60 s in the normal run; set TASK_HISTORY_TEST_SOAK_SECONDS=600 for the full ten minutes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Env
from tests.corpus import bad_bodies
from tests.harness import Bus, ConsumerProcess, count_dead_letters, count_rows, event, wait_for
from tests.helpers import new_task
from tests.reliability.conftest import Figures

SECONDS = float(os.environ.get("TASK_HISTORY_TEST_SOAK_SECONDS", "60"))
RATE = 200  # events per second
BAD_EVERY = 20  # one message in 20 is bad
WARM_UP = 10.0  # seconds before memory is judged: imports, pools and buffers settle
TICK = 0.1


@dataclass
class Samples:
    """What the consumer process looked like, every couple of seconds."""

    rss_mb: list[float] = field(default_factory=list)
    open_files: list[int] = field(default_factory=list)
    database_connections: list[int] = field(default_factory=list)
    queue_depth: list[int] = field(default_factory=list)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def open_files(pid: int) -> int:
    """How many file descriptors (sockets included) a process holds."""
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def watch(
    pid: int, bus: Bus, sql: asyncpg.Connection, samples: Samples, stop: asyncio.Event
) -> None:
    """Sample the consumer every 2 s until `stop` is set (after the warm-up only)."""
    started = time.monotonic()
    database = await sql.fetchval("SELECT current_database()")
    while not stop.is_set():
        await asyncio.sleep(2)
        samples.queue_depth.append(await bus.depth(bus.topology.queue))
        if time.monotonic() - started < WARM_UP:
            continue
        samples.rss_mb.append(rss_mb(pid))
        samples.open_files.append(open_files(pid))
        samples.database_connections.append(
            await sql.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        )


async def publish_steadily(
    bus: Bus, task_ids: list[uuid.UUID], bad: list[bytes]
) -> tuple[int, int]:
    """Publish RATE messages a second for SECONDS, one in BAD_EVERY bad; (valid, bad) sent."""
    valid = invalid = 0
    per_tick = round(RATE * TICK)
    started = time.monotonic()
    tick = 0
    while (elapsed := time.monotonic() - started) < SECONDS:
        batch = []
        for _ in range(per_tick):
            n = valid + invalid
            if n % BAD_EVERY == BAD_EVERY - 1:
                batch.append(bad[invalid % len(bad)])
                invalid += 1
            else:
                batch.append(
                    json.dumps(event(task_ids[valid % len(task_ids)], f"soak {n}")).encode()
                )
                valid += 1
        await asyncio.gather(*(bus.publish(body) for body in batch))
        tick += 1
        await asyncio.sleep(max(0.0, tick * TICK - elapsed - TICK))
    return valid, invalid


class TestSoak:
    """A long steady stream: nothing grows, nothing is lost."""

    @pytest.mark.timeout(SECONDS + 240)  # the run's own 300 s would cut the long variant
    async def test_steady_stream_with_bad_messages(self, env: Env, figures: Figures) -> None:
        """RSS and connections flat, the queue never backs up, every valid event stored."""
        total = int(SECONDS * RATE)
        task_ids = [await new_task(env.sql) for _ in range(max(10, math.ceil(total / 80)))]
        bad = [
            case.raw
            for case in bad_bodies(task_ids[0])
            if case.code != "too_large"  # 1 MiB each would make this a bandwidth test
        ]
        consumer = ConsumerProcess(env.settings, env.tmp_path / "consumer.log")
        consumer.start()
        samples = Samples()
        stop = asyncio.Event()
        try:
            async with Bus(env.amqp_url, env.topology) as bus:
                assert consumer.process is not None
                watcher = asyncio.create_task(
                    watch(consumer.process.pid, bus, env.sql, samples, stop)
                )
                valid, invalid = await publish_steadily(bus, task_ids, bad)
                await wait_for(
                    lambda: count_rows(env.database_url), lambda n: n == valid, timeout=60
                )
                await wait_for(lambda: count_dead_letters(env.database_url), lambda n: n >= invalid)
                stop.set()
                await watcher
                dead = await count_dead_letters(env.database_url)
        finally:
            consumer.signal(signal.SIGTERM)
            code = await consumer.exit_code()
        assert code == 0, consumer.log()

        quarter = max(1, len(samples.rss_mb) // 4)
        early = statistics.median(samples.rss_mb[:quarter])
        late = statistics.median(samples.rss_mb[-quarter:])
        stored = await count_rows(env.database_url)
        figures.faults, figures.events = invalid, valid + invalid
        figures.lost = valid - stored
        figures.dead_lettered_wrongly = dead - invalid
        figures.note = (
            f"{SECONDS:g} s at {RATE}/s; RSS {early:.0f} -> {late:.0f} MB; open files"
            f" {min(samples.open_files)}-{max(samples.open_files)}; database connections"
            f" {min(samples.database_connections)}-{max(samples.database_connections)};"
            f" deepest queue {max(samples.queue_depth)}"
        )
        assert (figures.lost, figures.dead_lettered_wrongly) == (0, 0)
        assert late - early < 15, samples.rss_mb  # MB: no leak worth the name
        assert max(samples.open_files) - min(samples.open_files) <= 4, samples.open_files
        assert max(samples.database_connections) <= 3, samples.database_connections
        assert max(samples.queue_depth) < RATE, samples.queue_depth  # never a second behind
