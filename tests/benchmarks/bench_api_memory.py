"""Benchmark: the read API's memory with the largest pages, and with thousands of open streams.

Run from the repository root (needs a PostgreSQL; it creates and drops its own database):

    .venv/bin/python -m tests.benchmarks.bench_api_memory [--streams 3000] [--json results.json]

A workspace holds 300 entries of the largest size an event may have (65,536 characters of a
four-byte emoji, and 64 KB of metadata: about 330 KB of JSON each), over three tasks.
`task-history serve` runs in a process of its own; its resident memory (VmRSS, and the peak,
VmHWM, from /proc) is read before and after:

- pages: four clients at once ask GET /workspaces/ID/history?limit=1000, once with the page
  budget as shipped (TASK_HISTORY_API_PAGE_MAX_BYTES, 4 MiB), once with it raised to 256 MiB,
  which is how a page behaved before it had a budget (it stopped only at `limit`);
- streams: `--streams` clients each open GET /tasks/ID/history/stream of a task of its own
  and stay, idle (the connection limit raised above that number for the run).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from consumer.store import Store
from tests.benchmarks.common import headed, run_and_report, scratch_database
from tests.cluster import free_port

REPOSITORY = Path(__file__).resolve().parents[2]
ENTRIES_PER_TASK = 100
TASKS = 3
CONCURRENT_PAGES = 4
# The largest content (in characters) and metadata (in bytes) an event may have.
CONTENT = "😀" * 65_536
METADATA = json.dumps({"blob": "m" * 65_000})


async def fill(database_url: str, workspace: uuid.UUID, streams: int) -> list[uuid.UUID]:
    """Migrate; TASKS tasks of the largest entries in `workspace`; `streams` more empty tasks."""
    async with Store(database_url, max_connections=1) as store:
        await store.migrate()
    sql = await asyncpg.connect(database_url)
    try:
        for _ in range(TASKS):
            task = uuid.uuid4()
            await sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
            await sql.execute(
                """
                INSERT INTO task_build_history (task_id, workspace_id, context_type, content,
                                                metadata, created_at)
                SELECT $1, $2, 'agent_turn', $3, $4::jsonb, now() - make_interval(secs => n)
                FROM generate_series(1, $5) AS n
                """,
                task,
                workspace,
                CONTENT,
                METADATA,
                ENTRIES_PER_TASK,
            )
        watched = [uuid.uuid4() for _ in range(streams)]
        await sql.executemany("INSERT INTO tasks (id) VALUES ($1)", [(t,) for t in watched])
    finally:
        await sql.close()
    return watched


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of process `pid`, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


class Server:
    """`task-history serve` in a process of its own."""

    def __init__(self, database_url: str, **settings: str) -> None:
        """Serve `database_url` with TASK_HISTORY_API_* `settings` (names without the prefix)."""
        self.port = free_port()
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("TASK_HISTORY_")
        } | {
            "TASK_HISTORY_DATABASE_URL": database_url,
            "TASK_HISTORY_API_PORT": str(self.port),
            "TASK_HISTORY_LOG_LEVEL": "warning",
            "TASK_HISTORY_LOG_FORMAT": "json",
        }
        environment |= {f"TASK_HISTORY_{name.upper()}": value for name, value in settings.items()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "consumer", "serve"],
            cwd=REPOSITORY,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        """Wait until /readyz says ready (at most 30 s)."""
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{self.url}/readyz") as response:
                        if response.status == 200:  # HTTP OK
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not get ready in 30 s")
                await asyncio.sleep(0.1)

    def memory(self) -> dict[str, int]:
        """Its VmRSS and VmHWM, in kB."""
        return memory_kb(self.process.pid)

    def stop(self) -> None:
        """SIGTERM, and wait."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


async def pages(database_url: str, workspace: uuid.UUID, *, budget: int) -> dict[str, object]:
    """RSS of a fresh server before and after four concurrent pages of the largest entries."""
    server = Server(database_url, api_page_max_bytes=str(budget))
    try:
        await server.ready()
        url = f"{server.url}/workspaces/{workspace}/history"
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(url, params={"limit": "1"}) as response:  # warm up
                await response.read()
            before = server.memory()

            async def one() -> tuple[int, int]:
                async with http.get(url, params={"limit": "1000"}) as response:
                    body = await response.read()
                return len(body), len(json.loads(body)["entries"])

            started = time.monotonic()
            answers = await asyncio.gather(*(one() for _ in range(CONCURRENT_PAGES)))
            seconds = time.monotonic() - started
        after = server.memory()
    finally:
        server.stop()
    return {
        "page_budget_bytes": budget,
        "concurrent_pages": CONCURRENT_PAGES,
        "response_bytes": answers[0][0],
        "entries_per_page": answers[0][1],
        "seconds": round(seconds, 2),
        "rss_before_mb": round(before["VmRSS"] / 1024, 1),
        "rss_peak_mb": round(after["VmHWM"] / 1024, 1),
        "peak_over_before_mb": round((after["VmHWM"] - before["VmRSS"]) / 1024, 1),
    }


async def open_stream(host: str, port: int, task: uuid.UUID) -> asyncio.StreamWriter:
    """A client following `task`'s stream, once its first line has come; its writer."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /tasks/{task}/history/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    while not (await reader.readline()).startswith(b"retry:"):
        pass
    return writer


async def open_streams(database_url: str, tasks: list[uuid.UUID]) -> dict[str, object]:
    """RSS of a server before and after len(tasks) streams, one per task, are open and idle."""
    server = Server(database_url, api_connection_limit=str(len(tasks) + 100))
    writers: list[asyncio.StreamWriter] = []
    try:
        await server.ready()
        before = server.memory()
        started = time.monotonic()
        for start in range(0, len(tasks), 200):  # within the listen backlog
            writers += await asyncio.gather(
                *(
                    open_stream("127.0.0.1", server.port, task)
                    for task in tasks[start : start + 200]
                )
            )
        opened = time.monotonic() - started
        await asyncio.sleep(2)
        after = server.memory()
    finally:
        for writer in writers:
            writer.close()
        server.stop()
    return {
        "streams": len(writers),
        "seconds_to_open": round(opened, 1),
        "rss_before_mb": round(before["VmRSS"] / 1024, 1),
        "rss_with_streams_mb": round(after["VmRSS"] / 1024, 1),
        "kb_per_stream": round((after["VmRSS"] - before["VmRSS"]) / len(writers), 1),
    }


async def run(streams: int) -> dict[str, object]:
    """Fill a scratch database; measure pages with and without the budget, then streams."""
    workspace = uuid.uuid4()
    async with scratch_database("th_bench_api_memory") as database_url:
        watched = await fill(database_url, workspace, streams)
        return headed(
            "api_memory",
            pages_with_the_budget=await pages(database_url, workspace, budget=4 * 1024 * 1024),
            pages_without_a_budget=await pages(database_url, workspace, budget=256 * 1024 * 1024),
            open_streams=await open_streams(database_url, watched),
        )


def table(result: dict[str, object]) -> list[str]:
    """The figures, one JSON object per measurement."""
    return [
        f"{name}: {json.dumps(result[name])}"
        for name in ("pages_with_the_budget", "pages_without_a_budget", "open_streams")
    ]


def main() -> None:
    """Parse the options, run, print (and save) the report."""
    run_and_report(
        __doc__,
        {"--streams": {"type": int, "default": 3000, "help": "streams to open"}},
        run,
        table,
    )


if __name__ == "__main__":
    main()
