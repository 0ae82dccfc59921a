"""Benchmark: 500-row batch inserts at the cap, with the check of ids received and without it.

Run from the repository root (needs a PostgreSQL; it creates and drops its own databases):

    .venv/bin/python -m tests.benchmarks.bench_ledger [--batches 60] [--json results.json]

The consumer's insert records every id in task_build_history_received and stores only those it
did not hold already, so that an event delivered again is not stored again after the cap removed
its first copy. "Without" is the same statement with that step taken out: what the check costs
each write. Both databases are clones of one template holding 300 tasks at the cap (the trim on
in both); batches alternate between them, so the machine's noise falls on both alike.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from consumer.store import Store, queries
from tests.benchmarks.common import (
    CAP,
    WARM_UP_BATCHES,
    comparison_main,
    database_server,
    exit_unless_at_cap,
    headed,
    insert_in_chunks,
    realistic_batches,
    realistic_rows,
)
from tests.helpers import admin, with_database

TASKS = 300
BATCH = 500
CHECK = """, first_seen AS (
    INSERT INTO task_build_history_received (id)
    SELECT id FROM r ORDER BY n
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)"""
JOIN = "JOIN first_seen USING (id)\n"


def without_check(statement: str) -> str:
    """The consumer's insert without the step that records and checks the ids received."""
    if CHECK not in statement or JOIN not in statement:
        raise SystemExit("bench_ledger: the insert statement changed; update CHECK and JOIN")
    return statement.replace(CHECK, "", 1).replace(JOIN, "", 1)


async def run(batches: int) -> dict[str, object]:
    """Build the at-cap template, clone it twice, and time alternating batches."""
    rng = random.Random(7)
    tasks = [uuid.uuid4() for _ in range(TASKS)]
    work = realistic_batches(rng, tasks, batches, BATCH)
    statements = (queries.INSERT_ENTRIES, without_check(queries.INSERT_ENTRIES))
    server = database_server()
    tag = uuid.uuid4().hex[:8]
    template, on, off = (f"th_bench_{k}_{tag}" for k in ("tpl", "ledger", "noledger"))
    await admin(server, f'CREATE DATABASE "{template}"')
    seconds = [0.0, 0.0]
    try:
        async with Store(with_database(server, template), max_connections=1) as store:
            await store.migrate()
            for task in tasks:
                await store.create_task(task)
            start = datetime.now(UTC) - timedelta(hours=1)
            fill = [
                row._replace(task_id=tasks[n % TASKS])
                for n, row in enumerate(realistic_rows(rng, tasks, TASKS * CAP, start))
            ]
            await insert_in_chunks(store, fill)
        await admin(server, *(f'CREATE DATABASE "{n}" TEMPLATE "{template}"' for n in (on, off)))
        for database in (on, off):
            await admin(with_database(server, database), "VACUUM ANALYZE")
        async with (
            Store(with_database(server, on), max_connections=1) as with_check,
            Store(with_database(server, off), max_connections=1) as without,
        ):
            sides = list(zip((with_check, without), statements, strict=True))
            for n, batch in enumerate(work):
                for k, (store, statement) in enumerate(sides):
                    queries.INSERT_ENTRIES = statement  # the store reads it at each call
                    started = time.perf_counter()
                    await store.insert_entries(batch)
                    if n >= WARM_UP_BATCHES:
                        seconds[k] += time.perf_counter() - started
            await exit_unless_at_cap(with_check, TASKS)
    finally:
        queries.INSERT_ENTRIES = statements[0]
        await admin(
            server, *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in (on, off, template))
        )
    timed = work[WARM_UP_BATCHES:]
    with_rate, without_rate = (sum(len(batch) for batch in timed) / s for s in seconds)
    return headed(
        "ledger",
        batches=len(timed),
        batch_rows=len(timed[0]),
        tasks_at_cap=TASKS,
        rows_per_s_with_ledger=round(with_rate),
        rows_per_s_without_ledger=round(without_rate),
        ratio=round(with_rate / without_rate, 3),
    )


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    title = (
        "500-row batches into {tasks_at_cap} tasks at the cap ({batches} per side), with the"
        " check of ids received (ledger) and without"
    )
    comparison_main(__doc__, run, title)


if __name__ == "__main__":
    main()
