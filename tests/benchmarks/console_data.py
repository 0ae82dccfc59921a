"""A history of realistic size and text for the console's benchmarks: 100,000 tasks x 100 entries.

Run from the repository root against a server of your own (it takes about ten minutes and
four gigabytes):

    .venv/bin/python -m tests.benchmarks.console_data postgresql://postgres@127.0.0.1:5460/big2

The database is created if missing and migrated (`--before NAME` stops the migrations before
the named file, to time that one on a full database by hand). Tasks come 100 to a workspace,
each in a session of its own; entries are text drawn from a vocabulary where a few words are
everywhere and most are rare (tests.benchmarks.common.Vocabulary), 100,000 different texts
shared out over the rows, each row ending in a word of its own (`run-` and 10 hex digits), so
a search can be for something every task has, something a few have, or exactly one entry.
About one entry in twelve is an error; half carry metadata with a link. Times spread over the
last 19 days (or `--days`), a task's entries 5 minutes apart.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid

import asyncpg

from consumer import migrations
from consumer.store import Store
from tests.benchmarks.common import Vocabulary
from tests.helpers import admin, with_database

TEXTS = 100_000
TASKS_PER_WORKSPACE = 100
TASKS_PER_STATEMENT = 5_000

# Each kind's share, out of 100 (chosen by a hash of the row, so the same on every load).
KINDS = """
CASE WHEN h < 30 THEN 'agent_turn' WHEN h < 65 THEN 'execution_step'
     WHEN h < 80 THEN 'chat_message' WHEN h < 88 THEN 'error'
     WHEN h < 96 THEN 'status_change' ELSE 'setup_complete' END
"""
INSERT = f"""
INSERT INTO task_build_history (id, task_id, workspace_id, session_id, context_type, content,
                                metadata, created_at)
SELECT gen_random_uuid(), t.id, t.workspace_id, t.session_id, {KINDS},
       p.content || ' run-' || substr(md5(t.id::text || g), 1, 10),
       CASE WHEN h % 2 = 0 THEN jsonb_build_object(
           'tool', 'pytest', 'exit_code', h % 3,
           'url', 'https://ci.example.com/runs/' || (t.n * 100 + g)) END,
       now() - interval '1 day' * $5 + t.n * interval '1 day' * ($5 - 1) / $3
           + g * interval '5 minutes'
FROM bench_tasks AS t
CROSS JOIN generate_series(1, $4) AS g
CROSS JOIN LATERAL (SELECT abs(hashint4(t.n * 1000 + g)::bigint) % 100 AS h) AS k
JOIN bench_texts AS p ON p.n = abs(hashint4(t.n * 7919 + g)::bigint) % {TEXTS}
WHERE t.n > $1 AND t.n <= $2
ORDER BY t.n, g
"""


async def load(
    url: str, *, tasks: int, per_task: int, before: str | None = None, days: int = 19
) -> None:
    """Create, migrate and fill the database at `url`, tasks begun over the last `days` days."""
    name = url.rsplit("/", 1)[1]
    server = with_database(url, "postgres")
    connection = await asyncpg.connect(server)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await connection.close()
    if not exists:
        await admin(server, f'CREATE DATABASE "{name}"')
    available = [m for m in migrations.discover() if before is None or m.name < before]
    async with Store(url, max_connections=1) as store:
        print("migrated:", await store.migrate(available), file=sys.stderr)
    rng = random.Random(30)
    words = Vocabulary(rng)
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_texts (n integer PRIMARY KEY, content text)"
        )
        if not await connection.fetchval("SELECT count(*) FROM bench_texts"):
            await connection.copy_records_to_table(
                "bench_texts", records=[(n, words.text(rng)) for n in range(TEXTS)]
            )
        await connection.execute(
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_tasks"
            " (n integer PRIMARY KEY, id uuid, workspace_id uuid, session_id uuid)"
        )
        done = await connection.fetchval("SELECT count(*) FROM task_build_history_counts")
        if not await connection.fetchval("SELECT count(*) FROM bench_tasks"):
            workspaces = [uuid.uuid4() for _ in range(tasks // TASKS_PER_WORKSPACE + 1)]
            rows = [
                (n, uuid.uuid4(), workspaces[(n - 1) // TASKS_PER_WORKSPACE], uuid.uuid4())
                for n in range(1, tasks + 1)
            ]
            await connection.copy_records_to_table("bench_tasks", records=rows)
            await connection.execute("INSERT INTO tasks (id) SELECT id FROM bench_tasks")
        for start in range(done, tasks, TASKS_PER_STATEMENT):
            began = time.monotonic()
            await connection.execute(
                INSERT, start, start + TASKS_PER_STATEMENT, tasks, per_task, days, timeout=3600
            )
            print(
                f"tasks to {start + TASKS_PER_STATEMENT}: {time.monotonic() - began:.0f} s",
                file=sys.stderr,
            )
        await connection.execute("VACUUM (ANALYZE)", timeout=3600)
    finally:
        await connection.close()


def main() -> None:
    """Parse the arguments and load."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--days", type=int, default=19, help="tasks begin over this many days")
    parser.add_argument("--before", help="stop the migrations before this file")
    arguments = parser.parse_args()
    asyncio.run(
        load(
            arguments.database_url,
            tasks=arguments.tasks,
            per_task=arguments.per_task,
            before=arguments.before,
            days=arguments.days,
        )
    )


if __name__ == "__main__":
    main()
