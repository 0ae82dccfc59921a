"""Benchmark: what each task's last activity and error count cost a 500-row insert at the cap.

Run from the repository root (needs a PostgreSQL; it creates and drops its own databases):

    .venv/bin/python -m tests.benchmarks.bench_counts [--batches 60] [--json results.json]

Three clones of one template holding 300 tasks at the cap; batches alternate between them so
the machine's noise falls on all alike. The insert is the consumer's own statement:

- `0010`: as migrated, the triggers keeping entries, errors and last activity, and the index
  of recent tasks on (last_activity, task_id);
- `no index`: the same counters without that index (the list of recent tasks then sorts every
  task's row);
- `0009`: the triggers of before (entries and received only), no index.
"""

from __future__ import annotations

import random
import uuid

from consumer.store import Store
from tests.benchmarks.common import (
    BATCHES_OPTION,
    WARM_UP_BATCHES,
    clones,
    exit_unless_at_cap,
    fill_realistically_to_cap,
    headed,
    realistic_batches,
    run_and_report,
    time_alternately,
)

TASKS = 300
BATCH = 500
WITHOUT_INDEX = ("DROP INDEX task_build_history_counts_recent",)
BEFORE = (
    *WITHOUT_INDEX,
    (
        "CREATE OR REPLACE TRIGGER task_build_history_trim AFTER INSERT ON task_build_history"
        " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION task_build_history_trim_v2()"
    ),
    (
        "CREATE OR REPLACE TRIGGER task_build_history_uncount AFTER DELETE ON task_build_history"
        " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION task_build_history_uncount_v1()"
    ),
    "DROP TRIGGER task_build_history_recount_errors ON task_build_history",
)
VARIANTS = {"0010": (), "no index": WITHOUT_INDEX, "0009": BEFORE}


async def run(batches: int) -> dict[str, object]:
    """Build the at-cap template, clone it three times, time alternating batches."""
    rng = random.Random(10)
    tasks = [uuid.uuid4() for _ in range(TASKS)]
    work = realistic_batches(rng, tasks, batches, BATCH)

    async def prepare(store: Store) -> None:
        await fill_realistically_to_cap(store, rng, tasks)

    async with clones("counts", prepare, VARIANTS, vacuum=True) as stores:
        seconds = await time_alternately(list(stores.values()), work)
        for store in stores.values():
            await exit_unless_at_cap(store, TASKS)
    rows = sum(len(batch) for batch in work[WARM_UP_BATCHES:])
    rates = {variant: round(rows / s) for variant, s in zip(VARIANTS, seconds, strict=True)}
    return headed(
        "counts",
        batches=len(work) - WARM_UP_BATCHES,
        batch_rows=BATCH,
        tasks_at_cap=TASKS,
        rows_per_s=rates,
        ratio_to_0009={variant: round(rate / rates["0009"], 3) for variant, rate in rates.items()},
    )


def table(result: dict[str, object]) -> list[str]:
    """The figures as printed."""
    rates = result["rows_per_s"]
    ratios = result["ratio_to_0009"]
    assert isinstance(rates, dict)
    assert isinstance(ratios, dict)
    lines = [
        (
            f"{result['batches']} batches of {result['batch_rows']} rows per side into"
            f" {result['tasks_at_cap']} tasks at the cap"
        )
    ]
    lines += [
        f"  {variant:<10} {rates[variant]:>8} rows/s  {ratios[variant]:>6} of 0009"
        for variant in VARIANTS
    ]
    return lines


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    run_and_report(__doc__, BATCHES_OPTION, run, table)


if __name__ == "__main__":
    main()
