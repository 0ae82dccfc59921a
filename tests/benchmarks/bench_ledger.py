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
import uuid
from collections.abc import Sequence

from consumer.entries import NewEntry
from consumer.store import Store, queries
from tests.benchmarks.common import (
    clones,
    compared,
    comparison_main,
    exit_unless_at_cap,
    fill_realistically_to_cap,
    realistic_batches,
    time_alternately,
)

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


class _Statement:
    """A store whose inserts run `statement` in place of the consumer's own."""

    def __init__(self, store: Store, statement: str) -> None:
        """Insert through `store` with `statement`."""
        self.store = store
        self.statement = statement

    async def insert_entries(self, rows: Sequence[NewEntry]) -> object:
        """Insert `rows` with this statement; the consumer's own is back afterwards."""
        own = queries.INSERT_ENTRIES
        queries.INSERT_ENTRIES = self.statement  # the store reads it at each call
        try:
            return await self.store.insert_entries(rows)
        finally:
            queries.INSERT_ENTRIES = own


async def run(batches: int) -> dict[str, object]:
    """Build the at-cap template, clone it twice, and time alternating batches."""
    rng = random.Random(7)
    tasks = [uuid.uuid4() for _ in range(TASKS)]
    work = realistic_batches(rng, tasks, batches, BATCH)

    async def prepare(store: Store) -> None:
        await fill_realistically_to_cap(store, rng, tasks)

    async with clones("ledger", prepare, {"with": (), "without": ()}, vacuum=True) as stores:
        own = queries.INSERT_ENTRIES
        sides = [_Statement(stores["with"], own), _Statement(stores["without"], without_check(own))]
        seconds = await time_alternately(sides, work)
        await exit_unless_at_cap(stores["with"], TASKS)
    return compared("ledger", work, seconds, tasks_at_cap=TASKS)


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    title = (
        "500-row batches into {tasks_at_cap} tasks at the cap ({batches} per side), with the"
        " check of ids received (ledger) and without"
    )
    comparison_main(__doc__, run, title)


if __name__ == "__main__":
    main()
