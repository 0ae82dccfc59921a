"""Benchmark: 500-row batch inserts into a history where every task is at the cap, trim on and off.

Run from the repository root (needs a PostgreSQL; it creates and drops its own databases):

    .venv/bin/python -m tests.benchmarks.bench_trim [--batches 60] [--json results.json]

Both databases are clones of one template holding 300 tasks at the cap; batches alternate
between them so the machine's noise falls on both alike. The insert is the consumer's own
statement (`Store.insert_entries`). "Without trim" disables the trim trigger: the physical floor
of the write itself.
"""

from __future__ import annotations

import random
import uuid

from consumer.store import Store
from tests.benchmarks.common import (
    compare_trigger,
    comparison_main,
    exit_unless_at_cap,
    fill_realistically_to_cap,
    realistic_batches,
)

TASKS = 300
BATCH = 500


async def run(batches: int) -> dict[str, object]:
    """Build the at-cap template, clone it twice, and time alternating batches."""
    rng = random.Random(7)
    tasks = [uuid.uuid4() for _ in range(TASKS)]
    work = realistic_batches(rng, tasks, batches, BATCH)

    async def prepare(store: Store) -> None:
        await fill_realistically_to_cap(store, rng, tasks)

    async def check(store: Store) -> None:
        await exit_unless_at_cap(store, TASKS)

    return await compare_trigger(
        "trim", prepare, work, vacuum=True, check=check, tasks_at_cap=TASKS
    )


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    title = "500-row batches into {tasks_at_cap} tasks at the cap ({batches} per side)"
    comparison_main(__doc__, run, title)


if __name__ == "__main__":
    main()
