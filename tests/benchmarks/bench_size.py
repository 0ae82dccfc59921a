"""Benchmark: what a bigger history costs ingestion, reads and expiry, size by size.

Run from the repository root (needs PostgreSQL and RabbitMQ; it makes and removes its own
database, exchanges and queues for each size):

    .venv/bin/python -m tests.benchmarks.bench_size [--sizes 100000 1000000 10000000]
        [--events 50000] [--ids v4|v7] [--json out.json]

Each size is a fresh database loaded by tests.benchmarks.console_data (text made of words,
100 tasks to a workspace, a session per task, metadata on half, 100 entries a task, 5
minutes apart, so every task is at the cap), the tasks begun evenly over the last 22 days:
about one entry in twelve is past the 20 days of retention. The redelivery ledger then gets
the ids of the last day, as a consumer's inserts leave it. The load runs through the table's
own triggers, then VACUUM ANALYZE. Then, in this order:

1. drain: a backlog of `--events` (50,000) events to 500 recent tasks, all at the cap, with
   random ids (UUIDv4, as many publishers make them) or with `--ids v7` time-ordered ones (as
   this project's publisher makes them), by `task-history consume` on its defaults, from the
   start of its first batch to the end of its last (start-up is not counted); and the tables
   and indexes that read the most blocks from outside PostgreSQL's buffers meanwhile, per
   1,000 events: where a bigger table costs;
2. task page and workspace page: the first page (100 entries) of 500 random live tasks, then
   of 200 random workspaces, as the API reads them (p50 and p99);
3. export: `task-history export --limit 200000` (or half the entries, if fewer), rows a second;
4. expiry: the procedure pg_cron runs (`task_build_history_expire_v2`, called directly)
   deleting what is past retention (rows a second), while the consumer stores 200 events a
   second; the publish-to-stored p99 at that rate before it, and while it runs. The
   consumers' own expiry loop is off throughout.

For 100 million entries: `--sizes 100000000` (about 60 GB of disk, and hours to load here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from consumer.events import new_event_id
from consumer.pages import HistoryQuery
from consumer.store import Store
from consumer.topology import Topology
from tests.benchmarks import console_data
from tests.benchmarks.bench_drain import backlog, consumer_environment, project, publish
from tests.benchmarks.bench_latency import Meter, Site, nearest_rank, start_project, summary
from tests.benchmarks.common import (
    CAP,
    amqp_server,
    declared_topology,
    headed,
    run_and_report,
    scratch_database,
)
from tests.helpers import admin

SIZES = [100_000, 1_000_000]
HOT_TASKS = 500  # the tasks the drain and the latency meter write to: recent, at the cap
PAGE_SAMPLES = 500
WORKSPACE_SAMPLES = 200
EXPORT_ROWS = 200_000
RATE = 200
READ_SOURCES = 4  # the tables and indexes that read the most blocks in the drain, reported
BEFORE_SECONDS = 10
DAYS = 22
# The consumer's own expiry loop would expire the entries past retention as it starts: off, so
# that the drain is only a drain, and the expiry is the one measured.
EXPIRY_OFF = {"TASK_HISTORY_EXPIRE_INTERVAL_SECONDS": "0"}
# The drained events' ids: random, as many publishers make them, or time-ordered, as this
# project's publisher does.
ID_VERSIONS = {"v4": uuid.uuid4, "v7": new_event_id}

# What a consumer's inserts leave in the redelivery ledger: the ids of the last day.
LEDGER_SQL = """
INSERT INTO task_build_history_received (id, received_at)
SELECT id, created_at FROM task_build_history WHERE created_at > now() - interval '1 day'
"""


async def load(database_url: str, entries: int) -> float:
    """Load `entries` entries (see the module's docstring); seconds it took."""
    started = time.perf_counter()
    await console_data.load(database_url, tasks=entries // CAP, per_task=CAP, days=DAYS)
    await admin(database_url, LEDGER_SQL, "VACUUM ANALYZE task_build_history_received")
    return time.perf_counter() - started


async def block_reads(database_url: str) -> dict[str, int]:
    """Blocks each table and index has read from outside PostgreSQL's buffers so far."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("SELECT pg_stat_force_next_flush()")
        rows = await connection.fetch(
            "SELECT indexrelname AS name, idx_blks_read AS n FROM pg_statio_user_indexes"
            " UNION ALL"
            " SELECT relname, heap_blks_read FROM pg_statio_user_tables"
        )
    finally:
        await connection.close()
    return {row["name"]: row["n"] or 0 for row in rows}


async def hot_tasks(database_url: str) -> list[uuid.UUID]:
    """The most recently begun tasks, which the drain and the meter write to."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT id FROM bench_tasks ORDER BY n DESC LIMIT $1", HOT_TASKS
        )
    finally:
        await connection.close()
    return [row["id"] for row in rows]


async def sample(database_url: str, column: str, count: int) -> list[uuid.UUID]:
    """`count` random distinct values of `column` among the tasks not past retention."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            f"SELECT value FROM (SELECT DISTINCT t.{column} AS value FROM bench_tasks AS t"
            " JOIN task_build_history_counts AS c ON c.task_id = t.id"  # our own names
            " WHERE c.last_activity > now() - interval '19 days') AS live"
            " ORDER BY random() LIMIT $1",
            count,
        )
    finally:
        await connection.close()
    return [row["value"] for row in rows]


async def page_times(store: Store, queries: Sequence[HistoryQuery]) -> dict[str, float]:
    """p50 and p99 of reading the first page of each query, in ms (after one untimed read)."""
    await store.find_page(queries[0])
    times = []
    for query in queries:
        started = time.perf_counter()
        page = await store.find_page(query)
        times.append((time.perf_counter() - started) * 1000)
        if not page.entries:
            sys.exit("benchmark: a page of a live task or workspace came back empty")
    ordered = sorted(times)
    return {
        "p50_ms": round(nearest_rank(ordered, 0.5), 2),
        "p99_ms": round(nearest_rank(ordered, 0.99), 2),
    }


def export_rate(database_url: str, rows: int) -> float:
    """Rows a second `task-history export --limit ROWS` writes, to a pipe read at once."""
    environment = consumer_environment(database_url, amqp_server(), Topology.named("unused"))
    started = time.perf_counter()
    done = subprocess.run(  # our own interpreter and module
        [sys.executable, "-m", "consumer", "export", "--limit", str(rows)],
        env=environment,
        capture_output=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    written = done.stdout.count(b"\n")
    if written != rows:
        sys.exit(f"benchmark: export wrote {written} rows, not {rows}")
    return rows / seconds


async def expiry_under_load(site: Site) -> dict[str, object]:
    """The scheduled expiry's rate, and the publish-to-stored latency before and while it runs.

    The procedure pg_cron calls is called here directly, so no pg_cron is needed.
    """
    connection = await asyncpg.connect(site.database_url)
    start = start_project(site, EXPIRY_OFF)
    try:
        async with start() as process, Meter(site).connected() as meter:
            await process.until("consuming")
            await meter.measure(RATE, RATE)  # warm-up
            before = await meter.measure(RATE, RATE * BEFORE_SECONDS)
            expired = await connection.fetchval(
                "SELECT count(*) FROM task_build_history WHERE expires_at <= now()"
            )
            during: list[float] = []
            started = time.perf_counter()
            expiry = asyncio.create_task(
                connection.execute("CALL task_build_history_expire_v2(10000)")
            )
            while not expiry.done():
                during += await meter.measure(RATE, RATE)
            await expiry
            seconds = time.perf_counter() - started
    finally:
        await connection.close()
    return {
        "expired_entries": expired,
        "expiry_seconds": round(seconds, 2),
        "expiry_rows_per_s": round(expired / seconds),
        "latency_before": summary(before),
        "latency_during": summary(during),
    }


@contextlib.asynccontextmanager
async def loaded(entries: int) -> AsyncIterator[tuple[str, float]]:
    """A scratch database holding `entries` entries; its URL and the seconds the load took."""
    async with scratch_database("th_bench_size") as database_url:
        yield database_url, await load(database_url, entries)


async def one_size(entries: int, events: int, ids: str) -> dict[str, object]:
    """Every figure at one size, on a database of its own."""
    url = amqp_server()
    rng = random.Random(entries)
    async with loaded(entries) as (database_url, load_seconds), declared_topology(url) as names:
        print(f"  {entries:,} entries loaded in {load_seconds:.0f} s", file=sys.stderr)
        hot = await hot_tasks(database_url)
        await publish(url, names, backlog(rng, hot, events, new_id=ID_VERSIONS[ids]))
        before = await block_reads(database_url)
        drain_seconds, _ = await project(database_url, url, names, events, extra=EXPIRY_OFF)
        after = await block_reads(database_url)
        tasks = await sample(database_url, "id", PAGE_SAMPLES)
        workspaces = await sample(database_url, "workspace_id", WORKSPACE_SAMPLES)
        async with Store(database_url, max_connections=1) as store:
            task_page = await page_times(store, [HistoryQuery(task_id=t, limit=100) for t in tasks])
            workspace_page = await page_times(
                store, [HistoryQuery(workspace_id=w, limit=100) for w in workspaces]
            )
        export = await asyncio.to_thread(export_rate, database_url, min(EXPORT_ROWS, entries // 2))
        expiry = await expiry_under_load(Site(database_url, url, names, hot))
    return {
        "entries": entries,
        "load_seconds": round(load_seconds),
        "drain_events_per_s": round(events / drain_seconds),
        "drain_reads_per_1000_events": {
            name: round((after[name] - before.get(name, 0)) * 1000 / events, 1)
            for name in sorted(after, key=lambda n: before.get(n, 0) - after[n])[:READ_SOURCES]
        },
        "task_page": task_page,
        "workspace_page": workspace_page,
        "export_rows_per_s": round(export),
        **expiry,
    }


async def run(sizes: list[int], events: int, ids: str) -> dict[str, object]:
    """Each size in turn, smallest first."""
    figures = []
    for entries in sorted(sizes):
        figures.append(await one_size(entries, events, ids))
        print(json.dumps(figures[-1]), file=sys.stderr)
    return headed("size", events=events, ids=ids, sizes=figures)


def table(result: dict[str, object]) -> list[str]:
    """The figures as printed: a column per size, and each against the smallest."""
    sizes = result["sizes"]
    assert isinstance(sizes, list)
    rows: list[tuple[str, list[float]]] = [
        ("drain, events/s", [s["drain_events_per_s"] for s in sizes]),
        ("task page p50, ms", [s["task_page"]["p50_ms"] for s in sizes]),
        ("task page p99, ms", [s["task_page"]["p99_ms"] for s in sizes]),
        ("workspace page p50, ms", [s["workspace_page"]["p50_ms"] for s in sizes]),
        ("workspace page p99, ms", [s["workspace_page"]["p99_ms"] for s in sizes]),
        ("export, rows/s", [s["export_rows_per_s"] for s in sizes]),
        ("expiry, rows/s", [s["expiry_rows_per_s"] for s in sizes]),
        ("expired entries", [s["expired_entries"] for s in sizes]),
        ("stored p99 before expiry, ms", [s["latency_before"]["p99_ms"] for s in sizes]),
        ("stored p99 during expiry, ms", [s["latency_during"]["p99_ms"] for s in sizes]),
    ]
    width = 30
    reads = [
        f"  {name}: " + ", ".join(str(s["drain_reads_per_1000_events"].get(name, 0)) for s in sizes)
        for name in sizes[-1]["drain_reads_per_1000_events"]
    ]
    lines = [
        (
            f"{result['events']} events (ids: UUID{result['ids']}) drained to {HOT_TASKS} tasks"
            f" at the cap; {RATE} events/s while expiry runs"
        ),
        f"{'entries':<{width}}" + "".join(f"{s['entries']:>14,}" for s in sizes),
    ]
    for name, values in rows:
        cells = "".join(f"{v:>14,}" for v in values)
        ratio = f"   x{values[-1] / values[0]:.2f}" if values[0] and len(values) > 1 else ""
        lines.append(f"{name:<{width}}{cells}{ratio}")
    return [*lines, "blocks read from outside the buffers per 1,000 events drained:", *reads]


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    options: dict[str, dict[str, Any]] = {
        "--sizes": {"type": int, "nargs": "+", "default": SIZES},
        "--events": {"type": int, "default": 50_000},
        "--ids": {"choices": list(ID_VERSIONS), "default": "v4"},
    }
    run_and_report(__doc__, options, run, table)


if __name__ == "__main__":
    main()
