"""Benchmark: what a bigger history costs ingestion, reads and expiry, size by size.

Run from the repository root (needs PostgreSQL and RabbitMQ; it makes and removes its own
database, exchanges and queues for each size):

    .venv/bin/python -m tests.benchmarks.bench_size [--sizes 100000 1000000 10000000]
        [--events 50000] [--ids v4 v7] [--json out.json]

About 25 minutes with the defaults on a 2-core machine, most of it loading the 10 million
entries (7 GB of disk).

Each size is a fresh database loaded by tests.benchmarks.console_data (text made of words,
100 tasks to a workspace, a session per task, metadata on half, 100 entries a task, 5
minutes apart, so every task is at the cap), the tasks begun evenly over the last 22 days:
about one entry in twelve is past the 20 days of retention. The redelivery ledger then gets
the ids of the last day, as a consumer's inserts leave it. The load runs through the table's
own triggers, then VACUUM ANALYZE. Then, in this order:

1. task page and workspace page: the first page (100 entries) of 500 random live tasks, then
   of 200 random workspaces, as the API reads them (p50 and p99), before anything else;
2. export: `task-history export --limit 200000` (or half the entries, if fewer), rows a second;
3. expiry: the procedure pg_cron runs (`task_build_history_expire_v2`, called directly)
   deleting what is past retention (rows a second), while the consumer stores 200 events a
   second; the publish-to-stored p99 at that rate before it, and while it runs. The
   consumers' own expiry loop is off throughout. Then VACUUM ANALYZE;
4. drain: a backlog of `--events` (50,000) events to 500 recent tasks, all at the cap, by
   `task-history consume` on its defaults, from the start of its first batch to the end of its
   last (start-up is not counted); and the tables and indexes that read the most blocks from
   outside PostgreSQL's buffers meanwhile, per 1,000 events: where a bigger table costs. Once
   with random ids (UUIDv4, as many publishers make them), then to 500 other tasks with
   time-ordered ones (UUIDv7, as this project's publisher makes them); `--ids` picks;
5. writes: what one 500-row write into the first 500 tasks costs with each kind of id, the
   kinds taking turns in blocks of ten batches, 40 batches each: ms (p50), blocks read from
   outside the buffers (all, and those of the index of ids), WAL kB and full-page images.

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
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
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
    realistic_rows,
    run_and_report,
    scratch_database,
)
from tests.helpers import admin

SIZES = [100_000, 1_000_000, 10_000_000]
HOT_TASKS = 500  # the tasks the drain and the latency meter write to: recent, at the cap
PAGE_SAMPLES = 500
WORKSPACE_SAMPLES = 200
EXPORT_ROWS = 200_000
RATE = 200
WRITE_BLOCKS = 4
WRITE_BLOCK = 10
READ_SOURCES = 4  # the tables and indexes that read the most blocks in the drain, reported
BEFORE_SECONDS = 10
DAYS = 22
# The consumer's own expiry loop would expire the entries past retention as it starts: off, so
# that the drain is only a drain, and the expiry is the one measured.
EXPIRY_OFF = {"TASK_HISTORY_EXPIRE_INTERVAL_SECONDS": "0"}
# The drained events' ids: random, as many publishers make them, or time-ordered, as this
# project's publisher does.
ID_VERSIONS = {"v4": uuid.uuid4, "v7": new_event_id}

# One drain's figures, as the result file holds them.
Drain = dict[str, object]

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
    async with Store(database_url, max_connections=1) as store:
        found = await counters(store)
    return {name: n for name, n in found.items() if not name.startswith("wal_")}


async def counters(store: Store) -> dict[str, int]:
    """Blocks read from outside the buffers by relation, and the server's WAL so far.

    Through the store's one connection, whose own counts are flushed first.
    """
    await store.pool.execute("SELECT pg_stat_force_next_flush()")
    rows = await store.pool.fetch(
        "SELECT indexrelname AS name, idx_blks_read AS n FROM pg_statio_user_indexes"
        " UNION ALL SELECT relname, heap_blks_read FROM pg_statio_user_tables"
        " UNION ALL SELECT 'wal_bytes', wal_bytes::bigint FROM pg_stat_wal"
        " UNION ALL SELECT 'wal_fpi', wal_fpi FROM pg_stat_wal"
    )
    return {row["name"]: row["n"] or 0 for row in rows}


async def write_costs(database_url: str, tasks: list[uuid.UUID]) -> dict[str, dict[str, float]]:
    """What one 500-row write into `tasks` at the cap costs, by kind of id.

    Blocks of WRITE_BLOCK batches, the kinds taking turns (a checkpoint falls on both alike):
    per batch, the median ms, the blocks read from outside the buffers (in all, and by the
    index of ids), and the WAL written, in bytes and in full-page images.
    """
    rng = random.Random(500)
    seen: dict[str, list[float]] = {kind: [] for kind in ID_VERSIONS}
    totals: dict[str, Counter[str]] = {kind: Counter() for kind in ID_VERSIONS}
    async with Store(database_url, max_connections=1) as store:
        for _ in range(WRITE_BLOCKS):
            for kind, new_id in ID_VERSIONS.items():
                before = await counters(store)
                for _ in range(WRITE_BLOCK):
                    now = datetime.now(UTC)
                    rows = [r._replace(id=new_id()) for r in realistic_rows(rng, tasks, 500, now)]
                    started = time.perf_counter()
                    await store.insert_entries(rows)
                    seen[kind].append((time.perf_counter() - started) * 1000)
                after = await counters(store)
                totals[kind].update({name: after[name] - before.get(name, 0) for name in after})
    batches = WRITE_BLOCKS * WRITE_BLOCK
    costs = {}
    for kind, total in totals.items():
        relations = [name for name in total if not name.startswith("wal_")]
        costs[kind] = {
            "ms_p50": round(nearest_rank(sorted(seen[kind]), 0.5), 1),
            "blocks_read": round(sum(total[name] for name in relations) / batches, 1),
            "id_index_blocks_read": round(total["task_build_history_pkey"] / batches, 1),
            "wal_kb": round(total["wal_bytes"] / batches / 1024),
            "wal_full_page_images": round(total["wal_fpi"] / batches, 1),
        }
    return costs


async def hot_tasks(database_url: str, *, skip: int) -> list[uuid.UUID]:
    """Recently begun tasks, after the `skip` most recent, for a drain (or the meter)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT id FROM bench_tasks ORDER BY n DESC OFFSET $1 LIMIT $2", skip, HOT_TASKS
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
            sys.exit(f"benchmark: a page of a live task or workspace came back empty: {query}")
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

            async def expire() -> float:
                """Run the procedure; the seconds it took (not when the meter next looks)."""
                started = time.perf_counter()
                await connection.execute("CALL task_build_history_expire_v2(10000)")
                return time.perf_counter() - started

            expiry = asyncio.create_task(expire())
            while not expiry.done():
                during += await meter.measure(RATE, RATE)
            seconds = await expiry
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


async def drain(database_url: str, names: Topology, *, events: int, ids: str, skip: int) -> Drain:
    """A backlog of `events` with `ids` drained to tasks at the cap: events/s, blocks read."""
    url = amqp_server()
    hot = await hot_tasks(database_url, skip=skip)
    await publish(url, names, backlog(random.Random(skip), hot, events, new_id=ID_VERSIONS[ids]))
    before = await block_reads(database_url)
    seconds, _ = await project(database_url, url, names, events, extra=EXPIRY_OFF)
    after = await block_reads(database_url)
    most = sorted(after, key=lambda name: before.get(name, 0) - after[name])[:READ_SOURCES]
    return {
        "events_per_s": round(events / seconds),
        "reads_per_1000_events": {
            name: round((after[name] - before.get(name, 0)) * 1000 / events, 1) for name in most
        },
    }


async def one_size(entries: int, events: int, ids: list[str]) -> dict[str, object]:
    """Every figure at one size, on a database of its own."""
    url = amqp_server()
    async with loaded(entries) as (database_url, load_seconds), declared_topology(url) as names:
        print(f"  {entries:,} entries loaded in {load_seconds:.0f} s", file=sys.stderr)
        # Reads first, of the history as loaded: the drains replace whole histories.
        tasks = await sample(database_url, "id", PAGE_SAMPLES)
        workspaces = await sample(database_url, "workspace_id", WORKSPACE_SAMPLES)
        async with Store(database_url, max_connections=1) as store:
            task_page = await page_times(store, [HistoryQuery(task_id=t, limit=100) for t in tasks])
            workspace_page = await page_times(
                store, [HistoryQuery(workspace_id=w, limit=100) for w in workspaces]
            )
        export = await asyncio.to_thread(export_rate, database_url, min(EXPORT_ROWS, entries // 2))
        # Expiry before the drains, which at the smallest size replace every task's entries.
        hot = await hot_tasks(database_url, skip=0)
        expiry = await expiry_under_load(Site(database_url, url, names, hot))
        await admin(database_url, "VACUUM ANALYZE task_build_history")  # as autovacuum would
        # Each kind of id drains to tasks of its own, all at the cap.
        drains = {
            kind: await drain(database_url, names, events=events, ids=kind, skip=n * HOT_TASKS)
            for n, kind in enumerate(ids)
        }
        writes = await write_costs(database_url, hot)
    return {
        "entries": entries,
        "load_seconds": round(load_seconds),
        "drain": drains,
        "write": writes,
        "task_page": task_page,
        "workspace_page": workspace_page,
        "export_rows_per_s": round(export),
        **expiry,
    }


async def run(sizes: list[int], events: int, ids: list[str]) -> dict[str, object]:
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
    kinds = list(sizes[0]["drain"])
    rows: list[tuple[str, list[float]]] = [
        *(
            (f"drain, UUID{kind} ids, events/s", [s["drain"][kind]["events_per_s"] for s in sizes])
            for kind in kinds
        ),
        *(
            (f"500-row write, UUID{kind}: {what}", [s["write"][kind][key] for s in sizes])
            for kind in ID_VERSIONS
            for what, key in (
                ("ms (p50)", "ms_p50"),
                ("blocks read", "blocks_read"),
                ("id index reads", "id_index_blocks_read"),
                ("WAL kB", "wal_kb"),
                ("WAL full pages", "wal_full_page_images"),
            )
        ),
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
    width = 40
    reads = [
        f"  UUID{kind} ids, {name}: "
        + ", ".join(str(s["drain"][kind]["reads_per_1000_events"].get(name, 0)) for s in sizes)
        for kind in kinds
        for name in sizes[-1]["drain"][kind]["reads_per_1000_events"]
    ]
    lines = [
        (
            f"{result['events']} events drained to {HOT_TASKS} tasks at the cap, per kind of id;"
            f" {RATE} events/s while expiry runs"
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
        "--ids": {"choices": list(ID_VERSIONS), "nargs": "+", "default": list(ID_VERSIONS)},
    }
    run_and_report(__doc__, options, run, table)


if __name__ == "__main__":
    main()
