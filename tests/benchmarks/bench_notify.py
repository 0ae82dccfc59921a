"""Benchmark: what the live-history trigger (sql/0002_notify.sql) costs 500-row batch inserts.

Run from the repository root (needs a PostgreSQL; it creates and drops its own databases):

    .venv/bin/python -m tests.benchmarks.bench_notify [--batches 60] [--json results.json]

Two clones of one migrated database with 300 tasks; in one the notify trigger is disabled.
Batches are the consumer's own statement (`Store.insert_entries`), spread over the 300 tasks
(so up to 300 notifications per batch), alternating between the clones so the machine's noise
falls on both alike. Nobody LISTENs, as in a deployment where no `tail` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from consumer.store import Store
from tests.benchmarks.bench_trim import realistic_rows
from tests.benchmarks.common import (
    WARM_UP_BATCHES,
    database_server,
    machine,
    now_iso,
    report,
    time_alternately,
)
from tests.helpers import admin, with_database

TASKS = 300
BATCH = 500


async def run(batches: int) -> dict[str, object]:
    """Build the template, clone it twice, and time alternating batches."""
    server = database_server()
    tag = uuid.uuid4().hex[:8]
    template, notifying, silent = (f"th_bench_{k}_{tag}" for k in ("ntpl", "notify", "silent"))
    rng = random.Random(11)
    tasks = [uuid.uuid4() for _ in range(TASKS)]
    await admin(server, f'CREATE DATABASE "{template}"')
    try:
        async with Store(with_database(server, template), max_connections=1) as store:
            await store.migrate()
            await store.create_tasks(tasks)
        await admin(
            server,
            f'CREATE DATABASE "{notifying}" TEMPLATE "{template}"',
            f'CREATE DATABASE "{silent}" TEMPLATE "{template}"',
        )
        await admin(
            with_database(server, silent),
            "ALTER TABLE task_build_history DISABLE TRIGGER task_build_history_notify",
        )
        work = [
            realistic_rows(rng, tasks, BATCH, datetime.now(UTC) + timedelta(seconds=n))
            for n in range(batches + WARM_UP_BATCHES)
        ]
        async with (
            Store(with_database(server, notifying), max_connections=1) as with_notify,
            Store(with_database(server, silent), max_connections=1) as without_notify,
        ):
            with_seconds, without_seconds = await time_alternately(
                (with_notify, without_notify), work
            )
        rows = batches * BATCH
        with_rate, without_rate = rows / with_seconds, rows / without_seconds
        return {
            "benchmark": "notify",
            "when": now_iso(),
            "machine": machine(),
            "batches": batches,
            "batch_rows": BATCH,
            "tasks": TASKS,
            "rows_per_s_with_notify": round(with_rate),
            "rows_per_s_without_notify": round(without_rate),
            "ratio": round(with_rate / without_rate, 3),
        }
    finally:
        await admin(
            server,
            *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in (notifying, silent, template)),
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
            f"500-row batches over {TASKS} tasks ({result['batches']} per side)",
            f"  with notify     {result['rows_per_s_with_notify']:>8} rows/s",
            f"  without notify  {result['rows_per_s_without_notify']:>8} rows/s",
            f"  ratio           {result['ratio']:>8}",
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
