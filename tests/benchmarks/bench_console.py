r"""Benchmark: the console's reads on a history of 10 million entries, p50 and p99 of each.

Run from the repository root against a database loaded by tests.benchmarks.console_data
(100,000 tasks x 100 entries of realistic text, 100 tasks to a workspace):

    .venv/bin/python -m tests.benchmarks.bench_console \\
        postgresql://postgres@127.0.0.1:5460/big2 [--runs 300] [--json out.json]

Each read is what `task-history serve` sends for one request, through the same store and
driver: the recent tasks (first page, and pages deep in the list), a task's, a workspace's and
a session's history searched with `q` (a page of 50 newest first within the byte budget, and
the counts by kind, as the page asks for both), and a search of every task (`GET /tasks?q=`,
looking at TASK_HISTORY_API_SEARCH_TASKS_PER_PAGE tasks at most). The text searched for is, in
turn, a word nearly every entry has, a word in about one entry in a thousand, a word of one
entry only (its `run-` word), and a word no entry has; the subject is drawn at random each run.
Runs alternate between the kinds of read, so the machine's noise falls on all alike. Then
five of them again as HTTP requests to `task-history serve` in a process of its own, one at a
time, to see what the server adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp

from consumer.console import TaskCursor
from consumer.pages import HistoryQuery
from consumer.settings import Settings
from consumer.store import Store
from tests.benchmarks.common import headed
from tests.cluster import free_port

PAGE = 50
BUDGET = Settings().api_page_max_bytes
EXAMINE = Settings().api_search_tasks_per_page
ABSENT = "zyxwvut-not-a-word"
# Words this long or shorter are left out of the ones searched for (they are parts of others).
SHORT = 3


async def subjects(store: Store) -> dict[str, Any]:
    """Tasks, workspaces and sessions to draw from, and words of each frequency."""
    rows = await store.pool.fetch(
        "SELECT id, workspace_id, session_id FROM bench_tasks ORDER BY n LIMIT 100000"
    )
    tasks = [row["id"] for row in rows]
    workspaces = sorted({row["workspace_id"] for row in rows})
    sessions = [row["session_id"] for row in rows]
    # A common word, and one found in about one entry in a thousand (counted on a sample).
    counts = await store.pool.fetch(
        "SELECT word, count(*) AS n FROM (SELECT regexp_split_to_table(content, ' ') AS word"
        " FROM task_build_history TABLESAMPLE SYSTEM (0.05)) AS w GROUP BY word"
    )
    total = await store.pool.fetchval(
        "SELECT count(*) FROM task_build_history TABLESAMPLE SYSTEM (0.05)"
    )
    share = {row["word"]: row["n"] / total for row in counts if len(row["word"]) > SHORT}
    common = max(share, key=lambda word: share[word])
    rare = min(share, key=lambda word: abs(share[word] - 0.001))
    return {
        "tasks": tasks,
        "workspaces": workspaces,
        "sessions": sessions,
        "words": {"common": common, "rare": rare, "absent": ABSENT},
        "shares": {"common": share[common], "rare": share[rare]},
    }


async def one_word(store: Store, task: UUID) -> str:
    """The word of one entry only: a task's `run-` word."""
    content = await store.pool.fetchval(
        "SELECT content FROM task_build_history WHERE task_id = $1 LIMIT 1", task
    )
    return str(content).rsplit(" ", 1)[1]


def timed(work: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[float]]:
    """`work` as a call that returns its milliseconds."""

    async def run() -> float:
        started = time.perf_counter()
        await work()
        return (time.perf_counter() - started) * 1000

    return run


def history_reads(
    store: Store, rng: random.Random, subjects_of: dict[str, list[UUID]], kind: str, word: str
) -> dict[str, Callable[[], Awaitable[float]]]:
    """The two requests the page sends for a subject searched: a page, and the counts by kind."""
    reads: dict[str, Callable[[], Awaitable[float]]] = {}
    for subject, names in subjects_of.items():
        label = SUBJECT_LABELS[subject]
        reads[f"{label} page, q {kind}"] = _page_read(store, rng, subject, names, word)
        reads[f"{label} counts, q {kind}"] = _counts_read(store, rng, subject, names, word)
    return reads


def _query(rng: random.Random, subject: str, names: list[UUID], word: str) -> HistoryQuery:
    """A search of one subject drawn at random, as the page asks for it."""
    chosen = rng.choice(names)
    return HistoryQuery(
        task_id=chosen if subject == "task" else None,
        workspace_id=chosen if subject == "workspace" else None,
        session_id=chosen if subject == "session" else None,
        text=word,
        newest_first=True,
        limit=PAGE,
    )


def _page_read(
    store: Store, rng: random.Random, subject: str, names: list[UUID], word: str
) -> Callable[[], Awaitable[float]]:
    async def page() -> object:
        return await store.find_page(_query(rng, subject, names, word), max_bytes=BUDGET)

    return timed(page)


def _counts_read(
    store: Store, rng: random.Random, subject: str, names: list[UUID], word: str
) -> Callable[[], Awaitable[float]]:
    async def counts() -> object:
        return await store.count_by_type(_query(rng, subject, names, word))

    return timed(counts)


def _search_read(store: Store, word: str) -> Callable[[], Awaitable[float]]:
    async def search() -> object:
        return await store.search_tasks(word, limit=PAGE, examine=EXAMINE)

    return timed(search)


SUBJECT_LABELS = {
    "task": "task history",
    "workspace": "workspace history (10,000 entries)",
    "session": "session history",
}


async def run(database_url: str, runs: int) -> dict[str, object]:
    """Time each kind of read `runs` times, in turn."""
    rng = random.Random(10)
    async with Store(database_url, max_connections=2) as store:
        known = await subjects(store)
        tasks, words = known["tasks"], known["words"]
        deep = [
            TaskCursor(row["last_activity"], row["task_id"])
            for row in await store.pool.fetch(
                "SELECT task_id, last_activity FROM task_build_history_counts"
                " TABLESAMPLE SYSTEM (1) LIMIT 500"
            )
        ]
        reads: dict[str, Callable[[], Awaitable[float]]] = {
            "recent tasks, first page": timed(lambda: store.recent_tasks(limit=PAGE)),
            "recent tasks, a page deep in the list": timed(
                lambda: store.recent_tasks(after=rng.choice(deep), limit=PAGE)
            ),
        }
        subjects_of = {
            "task": tasks,
            "workspace": known["workspaces"],
            "session": known["sessions"],
        }
        for kind, word in words.items():
            reads |= history_reads(store, rng, subjects_of, kind, word)
            reads[f"every task (GET /tasks?q=), q {kind}"] = _search_read(store, word)

        async def one_entry_word() -> float:
            word = await one_word(store, rng.choice(tasks))
            return await timed(lambda: store.search_tasks(word, limit=PAGE, examine=EXAMINE))()

        reads["every task (GET /tasks?q=), q of one entry"] = one_entry_word
        times: dict[str, list[float]] = {name: [] for name in reads}
        for _ in range(3):  # warm-up: caches and plans
            for read in reads.values():
                await read()
        for _ in range(runs):
            for name, read in reads.items():
                times[name].append(await read())
        # A search of every task to its end, page after page: how long the whole of it takes.
        started = time.perf_counter()
        pages, after = 0, None
        while True:
            page = await store.search_tasks(ABSENT, after=after, limit=PAGE, examine=EXAMINE)
            pages += 1
            if page.next is None:
                break
            after = page.next
        whole = time.perf_counter() - started
        entries = await store.pool.fetchval("SELECT count(*) FROM task_build_history")
    over_http = await http_reads(database_url, known, runs)
    return headed(
        "console",
        entries=entries,
        tasks=len(tasks),
        runs=runs,
        examine=EXAMINE,
        words=words,
        shares=known["shares"],
        ms={
            name: {
                "p50": round(statistics.median(values), 1),
                "p99": round(statistics.quantiles(values, n=100)[98], 1),
                "max": round(max(values), 1),
            }
            for name, values in times.items()
        },
        whole_search={"pages": pages, "seconds": round(whole, 1)},
        http_ms=over_http,
    )


async def http_reads(database_url: str, known: dict[str, Any], runs: int) -> dict[str, Any]:
    """The same reads as requests to `task-history serve` in a process of its own."""
    rng = random.Random(11)
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASK_HISTORY_")}
    environment |= {
        "TASK_HISTORY_DATABASE_URL": database_url,
        "TASK_HISTORY_API_PORT": str(port),
        "TASK_HISTORY_LOG_LEVEL": "warning",
        "TASK_HISTORY_LOG_FORMAT": "json",
    }
    server = subprocess.Popen(  # our own interpreter and module
        [sys.executable, "-m", "consumer", "serve"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    words = known["words"]
    paths: dict[str, Callable[[], str]] = {
        "GET /tasks": lambda: "/tasks",
        "GET /tasks/{id}/history?q= (rare)": lambda: (
            f"/tasks/{rng.choice(known['tasks'])}/history?newest_first=true&limit=50"
            f"&q={words['rare']}"
        ),
        "GET /workspaces/{id}/history?q= (rare)": lambda: (
            f"/workspaces/{rng.choice(known['workspaces'])}/history?newest_first=true&limit=50"
            f"&q={words['rare']}"
        ),
        "GET /workspaces/{id}/history/counts?q= (rare)": lambda: (
            f"/workspaces/{rng.choice(known['workspaces'])}/history/counts?q={words['rare']}"
        ),
        "GET /tasks?q= (absent)": lambda: f"/tasks?q={words['absent']}",
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:  # ready
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            for number in range(runs + 3):
                for name, path in paths.items():
                    started = time.perf_counter()
                    async with session.get(base + path()) as response:
                        await response.read()
                        assert response.status == 200, (
                            path(),
                            response.status,
                        )  # every read answers
                    if number >= 3:  # the first runs warm up
                        times[name].append((time.perf_counter() - started) * 1000)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return {
        name: {
            "p50": round(statistics.median(values), 1),
            "p99": round(statistics.quantiles(values, n=100)[98], 1),
            "max": round(max(values), 1),
        }
        for name, values in times.items()
    }


def table(result: dict[str, Any]) -> list[str]:
    """The figures as printed."""
    lines = [
        (
            f"{result['entries']:,} entries over {result['tasks']:,} tasks,"
            f" {result['runs']} runs of each; words: {result['words']}"
        ),
        f"{'read':<58} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    for name, figures in result["ms"].items():
        lines.append(f"{name:<58} {figures['p50']:>8} {figures['p99']:>8} {figures['max']:>8}")
    lines.append("over HTTP, to `task-history serve` in a process of its own:")
    for name, figures in result["http_ms"].items():
        lines.append(f"{name:<58} {figures['p50']:>8} {figures['p99']:>8} {figures['max']:>8}")
    whole = result["whole_search"]
    lines.append(
        f"a search of every task for a word no entry has, to its end: {whole['pages']} pages"
        f" of {result['examine']} tasks, {whole['seconds']} s"
    )
    return lines


def main() -> None:
    """Parse the arguments, run, print the table, and write JSON when asked."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    result = asyncio.run(run(arguments.database_url, arguments.runs))
    for line in table(result):
        print(line)
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
