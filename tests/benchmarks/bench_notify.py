"""Benchmark: what the live-history trigger (sql/0002_notify.sql) costs 500-row batch inserts.

Run from the repository root (needs a PostgreSQL; it creates and drops its own databases):

    .venv/bin/python -m tests.benchmarks.bench_notify [--batches 60] [--json results.json]

Two clones of one migrated database with 300 tasks; in one the notify trigger is disabled.
Batches are the consumer's own statement (`Store.insert_entries`), spread over the 300 tasks
(so up to 300 notifications per batch), alternating between the clones so the machine's noise
falls on both alike. Nobody LISTENs, as in a deployment where no `tail` runs.
"""

from __future__ import annotations

import random
import uuid

from consumer.store import Store
from tests.benchmarks.common import compare_trigger, comparison_main, realistic_batches

TASKS = 300
BATCH = 500


async def run(batches: int) -> dict[str, object]:
    """Build the template, clone it twice, and time alternating batches."""
    rng = random.Random(11)
    tasks = [uuid.uuid4() for _ in range(TASKS)]

    async def prepare(store: Store) -> None:
        await store.create_tasks(tasks)

    work = realistic_batches(rng, tasks, batches, BATCH)
    return await compare_trigger("notify", prepare, work, tasks=TASKS)


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    comparison_main(__doc__, run, "500-row batches over {tasks} tasks ({batches} per side)")


if __name__ == "__main__":
    main()
