"""Benchmark: publish-to-committed latency at steady rates, for this project or any consumer.

Run from the repository root (needs PostgreSQL and RabbitMQ; it makes and removes its own
database, exchanges and queues); about a minute and a half with the defaults:

    .venv/bin/python -m tests.benchmarks.bench_latency [--rates 50 200 1000] [--seconds 20]
        [--json out.json]

`task-history consume` runs on its defaults in a process of its own, over 300 tasks that are
already at the cap (so every write also trims). Events are published one at a time, paced to
each rate in turn (each leaves at its own moment, not in bursts), round-robin over the tasks.
An event's latency runs from just before its publish to the moment the commit that stored it
is seen: the table's trigger sends one notification per task per statement, delivered when the
transaction commits, holding the highest arrival sequence (`seq`) the statement gave that task;
the event is committed at the first such notification at or past its own row's `seq`. It
prints p50, p99 and max per rate; bench_peers measures the peers the same way, in one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg

from consumer.topology import Topology
from tests.benchmarks.bench_drain import consumer_environment
from tests.benchmarks.common import (
    amqp_server,
    content,
    database_at_cap,
    declared_topology,
    headed,
    run_and_report,
)

RATES = [50, 200, 1000]
SECONDS = 20
TASKS = 300
# A few events, not timed, before the first rate: caches, plans and connections warm up.
WARM_UP_EVENTS = 50
WARM_UP_RATE = 50
# Each rate's events must stay in the table until their rows are looked up: fewer than the cap
# of 100 a task (round-robin over TASKS), so the trim never reaches them.
MOST_EVENTS_PER_TASK = 90
ROUTING_KEY = "history.agent_turn"
READY_SECONDS = 60
REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Site:
    """Where a consumer is measured: its database, the broker and this run's names, the tasks."""

    database_url: str
    url: str
    topology: Topology
    tasks: list[uuid.UUID]


class Process:
    """A consumer in a process of its own, its output in a log file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        """Watch `process`, which writes to `log`."""
        self.process = process
        self.log = log

    def lines(self) -> list[dict[str, object]]:
        """The JSON lines of its output so far."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return found

    async def until(self, event: str, *, timeout: float = READY_SECONDS) -> dict[str, object]:
        """The first line of its output that is `event`; exit if it ends or times out first."""
        deadline = time.perf_counter() + timeout
        while True:
            for line in self.lines():
                if line.get("event") == event:
                    return line
            if self.process.returncode is not None or time.perf_counter() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                sys.exit(f"benchmark: a consumer did not report {event!r}:\n{tail}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running(
    command: Sequence[str], *, env: dict[str, str] | None = None
) -> AsyncIterator[Process]:
    """`command` running from the repository root until the block ends, then SIGTERM."""
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "consumer.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *command, env=env, cwd=REPOSITORY, stdout=output, stderr=output
            )
        try:
            yield Process(process, log)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    """The value at `fraction` of sorted `ordered` (the nearest-rank percentile)."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max of `latencies` (milliseconds), and how many."""
    ordered = sorted(latencies)
    return {
        "p50_ms": round(nearest_rank(ordered, 0.5), 1),
        "p99_ms": round(nearest_rank(ordered, 0.99), 1),
        "max_ms": round(ordered[-1], 1),
        "events": len(ordered),
    }


class Commits:
    """The table's notifications as they arrive: per task, (when, the highest seq committed)."""

    def __init__(self) -> None:
        """Nothing heard yet."""
        self.by_task: dict[str, list[tuple[float, int]]] = defaultdict(list)

    def heard(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        """A notification: note when, for which task, up to which seq."""
        note = json.loads(payload)
        self.by_task[note["task_id"]].append((time.perf_counter(), int(note["max_seq"])))

    def committed_at(self, task: str, seq: int) -> float | None:
        """When the row `seq` of `task` was first seen committed, if it was."""
        return next((at for at, top in self.by_task[task] if top >= seq), None)


class Meter:
    """Publishes paced events and times each to its commit, over one database and topology."""

    def __init__(self, site: Site) -> None:
        """Measure on the site's table through its topology, events spread over its tasks."""
        self._site = site
        self._tasks = [str(task) for task in site.tasks]
        self._rng = random.Random(200)
        self._sent = 0

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[Meter]:
        """Listening to the table's notifications and connected to publish, for the block."""
        self._commits = Commits()
        self._listener = await asyncpg.connect(self._site.database_url)
        self._queries = await asyncpg.connect(self._site.database_url)
        connection = await aio_pika.connect(self._site.url)
        try:
            await self._listener.add_listener("task_build_history", self._commits.heard)
            # Without confirms: a publisher waiting for each confirm could not keep the pace.
            channel = await connection.channel(publisher_confirms=False)
            self._exchange = await channel.get_exchange(self._site.topology.exchange)
            yield self
        finally:
            await connection.close()
            await self._queries.close()
            await self._listener.close()

    def _bodies(self, count: int) -> list[tuple[str, bytes]]:
        """`count` events, each with its own id, round-robin over the tasks."""
        events = []
        for _ in range(count):
            event_id = str(uuid.uuid4())
            task = self._tasks[self._sent % len(self._tasks)]
            self._sent += 1
            body = {
                "id": event_id,
                "task_id": task,
                "context_type": "agent_turn",
                "content": content(self._rng),
            }
            events.append((event_id, json.dumps(body).encode()))
        return events

    async def _publish(self, rate: float, count: int) -> dict[str, float]:
        """Publish `count` events at `rate` a second; when each left, by id."""
        published: dict[str, float] = {}
        events = self._bodies(count)
        started = time.perf_counter()
        for n, (event_id, body) in enumerate(events):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            message = aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            published[event_id] = time.perf_counter()
            await self._exchange.publish(message, routing_key=ROUTING_KEY)
        return published

    async def _rows(self, ids: list[str]) -> list[asyncpg.Record]:
        """The rows of events `ids`, once every one is stored; exit if they aren't in time.

        A consumer slower than the rate has a queue to work off first: a minute, and a second
        for every 100 events, is enough for one that writes 100 a second.
        """
        deadline = time.perf_counter() + 60 + len(ids) / 100
        while True:
            rows = await self._queries.fetch(
                "SELECT id::text AS id, task_id::text AS task_id, seq"
                " FROM task_build_history WHERE id = ANY($1::uuid[])",
                ids,
            )
            if len(rows) == len(ids):
                return list(rows)
            if time.perf_counter() > deadline:
                sys.exit(f"benchmark: only {len(rows)} of {len(ids)} events were stored in time")
            await asyncio.sleep(0.2)

    async def measure(self, rate: float, count: int) -> list[float]:
        """Milliseconds from publish to committed for `count` events published at `rate`."""
        self._commits.by_task.clear()
        published = await self._publish(rate, count)
        rows = await self._rows(list(published))
        latencies: list[float] = []
        deadline = time.perf_counter() + 10
        for row in rows:
            # The row is committed; its notification may still be on its way.
            while (at := self._commits.committed_at(row["task_id"], row["seq"])) is None:
                if time.perf_counter() > deadline:
                    sys.exit("benchmark: a committed event's notification never came")
                await asyncio.sleep(0.05)
            latencies.append((at - published[row["id"]]) * 1000)
        return latencies

    async def rates(self, rates: Sequence[int], seconds: float) -> dict[str, dict[str, float]]:
        """A short warm-up, then p50, p99 and max at each of `rates`, by rate."""
        await self.measure(WARM_UP_RATE, WARM_UP_EVENTS)
        return {
            str(rate): summary(await self.measure(rate, round(rate * seconds))) for rate in rates
        }


def check_spread(rates: Sequence[int], seconds: float, tasks: int) -> None:
    """Exit unless every rate's events fit under the cap of every task (see the constant)."""
    if max(rates) * seconds > MOST_EVENTS_PER_TASK * tasks:
        sys.exit(
            f"benchmark: {max(rates)} events/s for {seconds} s is more than {tasks} tasks"
            f" at {MOST_EVENTS_PER_TASK} each can keep for the look-up; use fewer seconds"
        )


async def latencies(
    site: Site,
    *,
    rates: Sequence[int],
    seconds: float,
    start: Callable[[], contextlib.AbstractAsyncContextManager[Process]],
) -> dict[str, dict[str, float]]:
    """The consumer `start` starts, measured at `rates` for `seconds` each, by rate."""
    check_spread(rates, seconds, len(site.tasks))
    async with start() as process, Meter(site).connected() as meter:
        await process.until("consuming")
        return await meter.rates(rates, seconds)


def start_project(
    site: Site, extra: dict[str, str] | None = None
) -> Callable[[], contextlib.AbstractAsyncContextManager[Process]]:
    """What starts `task-history consume` for the site, with `extra` variables."""
    environment = consumer_environment(site.database_url, site.url, site.topology, extra)
    return lambda: running([sys.executable, "-m", "consumer", "consume"], env=environment)


async def run(rates: list[int], seconds: float) -> dict[str, object]:
    """This project alone: a database at the cap, then each rate in turn."""
    url = amqp_server()
    tasks = [uuid.uuid4() for _ in range(TASKS)]
    async with (
        database_at_cap("th_bench_latency", tasks) as database_url,
        declared_topology(url) as topology,
    ):
        site = Site(database_url, url, topology, tasks)
        figures = await latencies(site, rates=rates, seconds=seconds, start=start_project(site))
    return headed("latency", tasks=TASKS, seconds_per_rate=seconds, latency=figures)


def table(result: dict[str, object]) -> list[str]:
    """The figures as printed."""
    figures = result["latency"]
    assert isinstance(figures, dict)
    lines = [
        (
            f"`task-history consume`, publish to committed, {result['tasks']} tasks at the cap,"
            f" {result['seconds_per_rate']} s a rate; {result['machine']}"
        ),
        "",
        "| events/s | p50 ms | p99 ms | max ms | events |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {rate} | {f['p50_ms']} | {f['p99_ms']} | {f['max_ms']} | {f['events']} |"
        for rate, f in figures.items()
    ]
    return lines


RATE_OPTIONS = {
    "--rates": {"type": int, "nargs": "+", "default": RATES, "help": "events/s, in turn"},
    "--seconds": {"type": float, "default": SECONDS, "help": "per rate"},
}


def main() -> None:
    """Parse arguments, run, print a table, and write JSON when asked."""
    run_and_report(__doc__, RATE_OPTIONS, run, table)


if __name__ == "__main__":
    main()
