"""Benchmark: 500-row batch inserts into a history where every task is at the cap, trim on and off.

Run from the repository root (needs a PostgreSQL; it creates and drops its own databases):

    .venv/bin/python -m tests.benchmarks.bench_trim [--batches 60] [--json results.json]

Both databases are clones of one template holding 300 tasks at the cap; batches alternate
between them so the machine's noise falls on both alike. The insert is the consumer's own
statement (`Store.insert_entries`). "Without trim" disables the trim trigger: the physical floor
of the write itself.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from consumer.entries import NewEntry
from consumer.store import Store
from tests.benchmarks.common import (
    CONTEXT_TYPES,
    WARM_UP_BATCHES,
    content,
    database_server,
    machine,
    metadata,
    now_iso,
    report,
    time_alternately,
)
from tests.helpers import admin, with_database

TASKS = 300
CAP = 100
BATCH = 500


def realistic_rows(
    rng: random.Random, tasks: list[uuid.UUID], count: int, start: datetime
) -> list[NewEntry]:
    """Rows like agents send, spread at random over `tasks`."""
    return [
        NewEntry(
            id=uuid.uuid4(),
            task_id=rng.choice(tasks),
            workspace_id=None,
            session_id=None,
            context_type=rng.choice(CONTEXT_TYPES),
            content=content(rng),
            metadata=metadata(rng, n),
            created_at=start + timedelta(microseconds=n),
        )
        for n in range(count)
    ]


async def run(batches: int) -> dict[str, object]:
    """Build the at-cap template, clone it twice, and time alternating batches."""
    server = database_server()
    tag = uuid.uuid4().hex[:8]
    template, trimmed, untrimmed = (f"th_bench_{k}_{tag}" for k in ("tpl", "trim", "notrim"))
    rng = random.Random(7)
    tasks = [uuid.uuid4() for _ in range(TASKS)]
    await admin(server, f'CREATE DATABASE "{template}"')
    try:
        async with Store(with_database(server, template), max_connections=1) as store:
            await store.migrate()
            for task in tasks:
                await store.create_task(task)
            fill_start = datetime.now(UTC) - timedelta(hours=1)
            fill = [
                row._replace(task_id=tasks[n % TASKS])
                for n, row in enumerate(realistic_rows(rng, tasks, TASKS * CAP, fill_start))
            ]
            for k in range(0, len(fill), 5000):
                await store.insert_entries(fill[k : k + 5000])
        await admin(
            server,
            f'CREATE DATABASE "{trimmed}" TEMPLATE "{template}"',
            f'CREATE DATABASE "{untrimmed}" TEMPLATE "{template}"',
        )
        await admin(
            with_database(server, untrimmed),
            "ALTER TABLE task_build_history DISABLE TRIGGER task_build_history_trim",
        )
        for name in (trimmed, untrimmed):
            await admin(with_database(server, name), "VACUUM ANALYZE")

        work = [
            realistic_rows(rng, tasks, BATCH, datetime.now(UTC) + timedelta(seconds=n))
            for n in range(batches + WARM_UP_BATCHES)
        ]
        async with (
            Store(with_database(server, trimmed), max_connections=1) as with_trim,
            Store(with_database(server, untrimmed), max_connections=1) as without_trim,
        ):
            with_seconds, without_seconds = await time_alternately((with_trim, without_trim), work)
            sizes = await with_trim.pool.fetch(
                "SELECT count(*) AS n FROM task_build_history GROUP BY task_id"
            )
            if {r["n"] for r in sizes} != {CAP}:
                sys.exit("benchmark: the trim left a task off the cap; the figures are void")
        rows = batches * BATCH
        with_rate, without_rate = rows / with_seconds, rows / without_seconds
        return {
            "benchmark": "trim",
            "when": now_iso(),
            "machine": machine(),
            "batches": batches,
            "batch_rows": BATCH,
            "tasks_at_cap": TASKS,
            "rows_per_s_with_trim": round(with_rate),
            "rows_per_s_without_trim": round(without_rate),
            "ratio": round(with_rate / without_rate, 3),
        }
    finally:
        await admin(
            server,
            *(
                f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'
                for n in (trimmed, untrimmed, template)
            ),
        )


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60, help="timed batches per side")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    result = asyncio.run(run(args.batches))
    report(
        result,
        [
            f"500-row batches into {TASKS} tasks at the cap ({result['batches']} per side)",
            f"  with trim     {result['rows_per_s_with_trim']:>8} rows/s",
            f"  without trim  {result['rows_per_s_without_trim']:>8} rows/s",
            f"  ratio         {result['ratio']:>8}",
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
