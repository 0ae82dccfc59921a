"""Benchmark: the HTTP read API, for pages of 100 entries and for 100 watchers of one task.

Run from the repository root (needs a PostgreSQL, and wrk for the page figure; it creates and
drops its own database):

    .venv/bin/python -m tests.benchmarks.bench_api [--seconds 10] [--connections 50]
        [--watchers 100] [--rounds 50] [--json results.json]

`task-history serve` runs in a process of its own on a migrated scratch database holding one
task at the cap (100 entries of realistic size). Pages: wrk asks GET /tasks/ID/history (the
default page, all 100 entries) over `--connections` connections for `--seconds` seconds; without
wrk, an asyncio client does the same. Fan-out: `--watchers` clients follow the task's stream;
one entry is inserted at a time, `--rounds` times, and the time from the INSERT being sent to
each watcher reading the entry is recorded: p50 and p99 of the time for all watchers to have it
and of single deliveries.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg

from consumer.entries import NewEntry
from consumer.store import Store
from tests.benchmarks.common import content, headed, metadata, run_and_report, scratch_database
from tests.cluster import free_port

REPOSITORY = Path(__file__).resolve().parents[2]
CAP = 100


async def fill(database_url: str, task: uuid.UUID) -> None:
    """Migrate, and give `task` 100 entries of realistic content and metadata."""
    rng = random.Random(18)
    start = datetime.now(UTC) - timedelta(hours=1)
    async with Store(database_url, max_connections=1) as store:
        await store.migrate()
        await store.create_tasks([task])
        await store.insert_entries(
            [
                NewEntry(
                    uuid.uuid4(),
                    task,
                    uuid.uuid4(),
                    None,
                    "agent_turn",
                    content(rng),
                    metadata(rng, n),
                    start + timedelta(seconds=n),
                )
                for n in range(CAP)
            ]
        )


def start_server(database_url: str, port: int) -> subprocess.Popen[bytes]:
    """`task-history serve` on `port`, logging warnings only, started."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("TASK_HISTORY_")
    } | {
        "TASK_HISTORY_DATABASE_URL": database_url,
        "TASK_HISTORY_API_PORT": str(port),
        "TASK_HISTORY_LOG_LEVEL": "warning",
        "TASK_HISTORY_LOG_FORMAT": "json",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "consumer", "serve"],
        cwd=REPOSITORY,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )


async def wait_ready(url: str) -> None:
    """Wait until /readyz says ready (at most 30 s)."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:  # HTTP OK
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not get ready in 30 s")
            await asyncio.sleep(0.1)


def page_with_wrk(url: str, *, seconds: int, connections: int) -> dict[str, object]:
    """The requests/s and latency wrk measures for GET `url`."""
    command = [
        "wrk",
        "--threads",
        "2",
        "--connections",
        str(connections),
        "--duration",
        f"{seconds}s",
        "--latency",
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    if rate is None:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    return {
        "tool": " ".join(command[:-1]),
        "requests_per_second": float(rate.group(1)),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "latency_p50": latency.get("50"),
        "latency_p99": latency.get("99"),
    }


async def page_with_asyncio(url: str, *, seconds: int, connections: int) -> dict[str, object]:
    """The same as page_with_wrk, from an asyncio client (when wrk is not installed)."""
    done = 0
    failed = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < deadline:
                async with http.get(url) as response:
                    await response.read()
                    if response.status == 200:  # HTTP OK
                        done += 1
                    else:
                        failed += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - started
    return {
        "tool": f"asyncio client, {connections} connections",
        "requests_per_second": round(done / elapsed, 1),
        "non_2xx": failed,
    }


async def fan_out(
    url: str, database_url: str, task: uuid.UUID, *, watchers: int, rounds: int
) -> dict[str, object]:
    """Insert `rounds` entries one by one; time each watcher's receipt of each."""
    received: list[dict[str, float]] = [{} for _ in range(watchers)]
    ready = asyncio.Semaphore(0)
    connector = aiohttp.TCPConnector(limit=watchers + 10)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def watch(n: int) -> None:
            async with http.get(f"{url}/tasks/{task}/history/stream") as response:
                ready.release()
                async for line in response.content:
                    if line.startswith(b"data: "):
                        received[n][json.loads(line[6:])["content"]] = time.perf_counter()

        watching = [asyncio.create_task(watch(n)) for n in range(watchers)]
        for _ in range(watchers):
            await ready.acquire()
        sql = await asyncpg.connect(database_url)
        all_in: list[float] = []
        single: list[float] = []
        try:
            for round_number in range(rounds):
                label = f"round {round_number}"
                sent = time.perf_counter()
                await sql.execute(
                    "INSERT INTO task_build_history (task_id, context_type, content)"
                    " VALUES ($1, 'agent_turn', $2)",
                    task,
                    label,
                )
                deadline = time.monotonic() + 10
                while not all(label in got for got in received):
                    if time.monotonic() > deadline:
                        missing = sum(label not in got for got in received)
                        raise SystemExit(f"{missing} watchers did not get {label} in 10 s")
                    await asyncio.sleep(0.001)
                times = [got[label] - sent for got in received]
                all_in.append(max(times))
                single.extend(times)
                await asyncio.sleep(0.05)
        finally:
            await sql.close()
            for task_watching in watching:
                task_watching.cancel()
            await asyncio.gather(*watching, return_exceptions=True)
    return {
        "watchers": watchers,
        "rounds": rounds,
        "all_watchers_ms_p50": _ms(_percentile(all_in, 50)),
        "all_watchers_ms_p99": _ms(_percentile(all_in, 99)),
        "one_delivery_ms_p50": _ms(_percentile(single, 50)),
        "one_delivery_ms_p99": _ms(_percentile(single, 99)),
    }


def _percentile(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def run(seconds: int, connections: int, watchers: int, rounds: int) -> dict[str, object]:
    """Fill a scratch database, serve it, and measure pages and fan-out."""
    task = uuid.uuid4()
    async with scratch_database("th_bench_api") as database_url:
        await fill(database_url, task)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(database_url, port)
        try:
            await wait_ready(url)
            page_url = f"{url}/tasks/{task}/history"
            async with (
                aiohttp.ClientSession() as http,
                http.get(page_url) as response,
            ):
                page = await response.json()
            assert len(page["entries"]) == CAP, page
            size = len(json.dumps(page))
            if shutil.which("wrk"):
                pages = await asyncio.to_thread(
                    page_with_wrk, page_url, seconds=seconds, connections=connections
                )
            else:
                pages = await page_with_asyncio(page_url, seconds=seconds, connections=connections)
            streams = await fan_out(url, database_url, task, watchers=watchers, rounds=rounds)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    return headed("api", page_bytes=size, pages=pages, fan_out=streams)


def table(result: dict[str, object]) -> list[str]:
    """The figures as lines."""
    pages = result["pages"]
    streams = result["fan_out"]
    assert isinstance(pages, dict)
    assert isinstance(streams, dict)
    return [
        f"{result['machine']}",
        f"page of 100 entries ({result['page_bytes']} bytes), {pages['tool']}:",
        (
            f"  {pages['requests_per_second']} requests/s, non-2xx {pages['non_2xx']},"
            f" latency p50 {pages.get('latency_p50', '-')}, p99 {pages.get('latency_p99', '-')}"
        ),
        f"SSE fan-out to {streams['watchers']} watchers of one task, {streams['rounds']} entries:",
        (
            f"  insert to all watchers: p50 {streams['all_watchers_ms_p50']} ms,"
            f" p99 {streams['all_watchers_ms_p99']} ms"
        ),
        (
            f"  insert to one watcher:  p50 {streams['one_delivery_ms_p50']} ms,"
            f" p99 {streams['one_delivery_ms_p99']} ms"
        ),
    ]


def main() -> None:
    """Parse arguments, run, print the figures, and write JSON when asked."""
    run_and_report(
        __doc__,
        {
            "--seconds": {"type": int, "default": 10, "help": "how long wrk asks for pages"},
            "--connections": {"type": int, "default": 50, "help": "wrk's connections"},
            "--watchers": {"type": int, "default": 100, "help": "clients following the task"},
            "--rounds": {"type": int, "default": 50, "help": "entries inserted one at a time"},
        },
        run,
        table,
    )


if __name__ == "__main__":
    main()
