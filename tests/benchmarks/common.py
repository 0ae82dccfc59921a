"""What the benchmarks share: servers, scratch databases and names, events, timing, the report."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractQueue

from consumer.broker.client import Broker
from consumer.entries import ContextType, NewEntry
from consumer.store import Store
from consumer.topology import Topology
from tests.helpers import admin, with_database

LOCAL_DATABASE = "postgresql://postgres@localhost:5432/postgres"
LOCAL_AMQP = "amqp://guest:guest@localhost:5672/"
CONTEXT_TYPES = [c.value for c in ContextType]
CAP = 100
WARM_UP_BATCHES = 3  # the first batches warm caches and plans; they are not timed
# The command-line options more than one benchmark takes.
BATCHES_OPTION = {"--batches": {"type": int, "default": 60, "help": "timed batches per side"}}
BACKLOG_OPTIONS = {
    "--events": {"type": int, "default": 60_000},
    "--tasks": {"type": int, "default": 300},
}


def _first_set(names: Sequence[str], default: str) -> str:
    """The first of the environment variables `names` that is set, else `default`."""
    return next((os.environ[name] for name in names if os.environ.get(name)), default)


def database_server() -> str:
    """The PostgreSQL server to benchmark on."""
    names = ("TASK_HISTORY_BENCH_DATABASE_URL", "TASK_HISTORY_TEST_DATABASE_URL")
    return _first_set(names, LOCAL_DATABASE)


def amqp_server() -> str:
    """The RabbitMQ to benchmark on."""
    return _first_set(("TASK_HISTORY_BENCH_AMQP_URL", "TASK_HISTORY_TEST_AMQP_URL"), LOCAL_AMQP)


@contextlib.asynccontextmanager
async def scratch_database(prefix: str) -> AsyncIterator[str]:
    """A new empty database, dropped on the way out; yields its URL."""
    server = database_server()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await admin(server, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        await admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def database_at_cap(prefix: str, tasks: list[uuid.UUID]) -> AsyncIterator[str]:
    """A scratch database, migrated, every one of `tasks` at the cap; yields its URL."""
    async with scratch_database(prefix) as database_url:
        await fill_to_cap(database_url, tasks)
        yield database_url


@contextlib.asynccontextmanager
async def declared_topology(url: str) -> AsyncIterator[Topology]:
    """Exchanges and queues named for this run, declared, and deleted on the way out."""
    topology = Topology.named(f"th_bench_{uuid.uuid4().hex[:8]}")
    async with Broker(url, topology=topology) as broker:
        await broker.declare()
    try:
        yield topology
    finally:
        async with Broker(url, topology=topology) as broker:
            await broker.delete()


def content(rng: random.Random) -> str:
    """Text the size agents send: median about 250 characters, a long tail up to 8,000."""
    return "x" * max(1, min(8000, int(rng.lognormvariate(5.5, 1.0))))


# Words agents write: the commonest first. With generated names (functions, files, error
# classes) they make a vocabulary where a few words are everywhere and most are rare.
_COMMON_TEXT = (
    "the to a of and in for is on with test tests file run ran passed failed error build step"
    " turn agent user planning next change edited added removed src py module function import"
    " pytest install dependencies workspace ready running review done fix bug config update"
    " check line lines exit code output warning timeout retry request response api database"
    " query table index migration schema commit branch merge diff patch read write open close"
    " cache memory process thread async await return value type string number list dict key"
    " missing found expected got assert raised exception traceback call stack frame module"
)
_COMMON_WORDS = tuple(_COMMON_TEXT.split())
_SYLLABLES = (
    "ba be bi bo bu ca co cu da de di do fa fe fi fo ga ge go ka ke ki ko la le li lo"
    " ma me mi mo na ne ni no pa pe pi po ra re ri ro sa se si so ta te ti to va ve"
)


class Vocabulary:
    """Words drawn as text is: a few very often, most rarely (weights fall as 1/rank)."""

    def __init__(self, rng: random.Random, *, generated: int = 20_000) -> None:
        """The common words, then `generated` made-up names of functions, files and errors."""
        syllables = _SYLLABLES.split()
        words = list(_COMMON_WORDS)
        shapes = ("{}_{}", "{}{}.py", "{}{}Error", "test_{}_{}", "{}{}{}")
        while len(words) < len(_COMMON_WORDS) + generated:
            parts = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(3)]
            shape = rng.choice(shapes)
            words.append(shape.format(*parts[: shape.count("{}")]))
        self.words = words
        total, self._cumulative = 0.0, []
        for rank in range(len(words)):
            total += 1 / (rank + 1)
            self._cumulative.append(total)
        self._total = total

    def text(self, rng: random.Random) -> str:
        """Text of the length content() has, made of these words."""
        length = max(1, min(8000, int(rng.lognormvariate(5.5, 1.0))))
        chosen: list[str] = []
        size = 0
        while size < length:
            word = self.words[bisect.bisect_left(self._cumulative, rng.random() * self._total)]
            chosen.append(word)
            size += len(word) + 1
        return " ".join(chosen)[:length]


def metadata(rng: random.Random, n: int) -> str | None:
    """Small JSON metadata on half the events."""
    if rng.random() < 0.5:
        return json.dumps({"tool": "pytest", "exit_code": rng.randint(0, 2), "n": n})
    return None


def machine() -> str:
    """A line saying where the figures come from."""
    return f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def now_iso() -> str:
    """The time now, for the result file."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def headed(benchmark: str, **figures: object) -> dict[str, object]:
    """A result as the JSON file holds it: the benchmark's name, when, where, then `figures`."""
    return {"benchmark": benchmark, "when": now_iso(), "machine": machine(), **figures}


def report(result: dict[str, object], lines: list[str], json_path: Path | None) -> None:
    """Print the table's lines, and write `result` as JSON when a path is given."""
    for line in lines:
        print(line)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def run_and_report(
    doc: str | None,
    options: dict[str, dict[str, Any]],
    run: Callable[..., Coroutine[Any, Any, dict[str, object]]],
    table: Callable[[dict[str, object]], list[str]],
) -> None:
    """Parse `options` and --json, call `run` with the options, print `table` of its result.

    The result is also written as JSON to the file --json names.
    """
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    for flag, how in options.items():
        parser.add_argument(flag, **how)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    arguments = vars(parser.parse_args())
    json_path = arguments.pop("json")
    result = asyncio.run(run(**arguments))
    report(result, table(result), json_path)


async def fill_to_cap(database_url: str, tasks: list[uuid.UUID]) -> None:
    """Migrate and put every task at the cap, so that every batch trims."""
    async with Store(database_url, max_connections=1) as store:
        await store.migrate()
        await store.create_tasks(tasks)
        start = datetime.now(UTC) - timedelta(hours=1)
        fill = [
            NewEntry(uuid.uuid4(), task, None, None, "agent_turn", "x" * 200, None, start)
            for task in tasks
            for _ in range(CAP)
        ]
        await insert_in_chunks(store, fill)


async def insert_in_chunks(store: Store, rows: Sequence[NewEntry]) -> None:
    """Insert `rows` 5,000 at a time."""
    for k in range(0, len(rows), 5000):
        await store.insert_entries(rows[k : k + 5000])


async def exit_unless_at_cap(store: Store, tasks: int) -> None:
    """End the benchmark if any of the `tasks` tasks is off the cap: its figures would be void."""
    sizes = await store.pool.fetch("SELECT count(*) AS n FROM task_build_history GROUP BY task_id")
    if {r["n"] for r in sizes} != {CAP} or len(sizes) != tasks:
        sys.exit("benchmark: tasks are not exactly at the cap; the figures are void")


class Inserter(Protocol):
    """What the timed benchmarks insert through: a store, or one that runs another statement."""

    async def insert_entries(self, rows: Sequence[NewEntry]) -> object:
        """Insert `rows`."""


async def time_alternately(
    stores: Sequence[Inserter], work: Sequence[list[NewEntry]]
) -> list[float]:
    """Seconds each store spent inserting `work`, batch by batch in turn, so noise falls alike."""
    seconds = [0.0] * len(stores)
    for n, batch in enumerate(work):
        for k, store in enumerate(stores):
            started = time.perf_counter()
            await store.insert_entries(batch)
            if n >= WARM_UP_BATCHES:
                seconds[k] += time.perf_counter() - started
    return seconds


def realistic_rows(
    rng: random.Random, tasks: list[uuid.UUID], count: int, start: datetime
) -> list[NewEntry]:
    """Rows like agents send, spread at random over `tasks`."""
    return [
        NewEntry(
            id=uuid.uuid4(),
            task_id=rng.choice(tasks),
            workspace_id=None,
            session_id=None,
            context_type=rng.choice(CONTEXT_TYPES),
            content=content(rng),
            metadata=metadata(rng, n),
            created_at=start + timedelta(microseconds=n),
        )
        for n in range(count)
    ]


def realistic_batches(
    rng: random.Random, tasks: list[uuid.UUID], batches: int, size: int
) -> list[list[NewEntry]]:
    """`batches` timed batches of `size` realistic rows, after the untimed warm-up ones."""
    return [
        realistic_rows(rng, tasks, size, datetime.now(UTC) + timedelta(seconds=n))
        for n in range(batches + WARM_UP_BATCHES)
    ]


async def fill_realistically_to_cap(
    store: Store, rng: random.Random, tasks: list[uuid.UUID]
) -> None:
    """Create `tasks` and give each CAP realistic entries, an hour old: every batch then trims."""
    await store.create_tasks(tasks)
    start = datetime.now(UTC) - timedelta(hours=1)
    fill = [
        row._replace(task_id=tasks[n % len(tasks)])
        for n, row in enumerate(realistic_rows(rng, tasks, len(tasks) * CAP, start))
    ]
    await insert_in_chunks(store, fill)


@contextlib.asynccontextmanager
async def clones(
    name: str,
    prepare: Callable[[Store], Awaitable[None]],
    variants: Mapping[str, Sequence[str]],
    *,
    vacuum: bool = False,
) -> AsyncIterator[dict[str, Store]]:
    """An open store on each clone of a template `prepare` filled; all dropped afterwards.

    The template is migrated, then given to `prepare`; each variant's clone runs its statements,
    then VACUUM ANALYZE with `vacuum`. The stores come in the order of `variants`.
    """
    server = database_server()
    tag = uuid.uuid4().hex[:8]
    template = f"th_bench_{name}_tpl_{tag}"
    names = {variant: f"th_bench_{name}_{n}_{tag}" for n, variant in enumerate(variants)}
    await admin(server, f'CREATE DATABASE "{template}"')
    try:
        async with Store(with_database(server, template), max_connections=1) as store:
            await store.migrate()
            await prepare(store)
        await admin(
            server, *(f'CREATE DATABASE "{n}" TEMPLATE "{template}"' for n in names.values())
        )
        for variant, statements in variants.items():
            run = [*statements, *(["VACUUM ANALYZE"] if vacuum else [])]
            if run:
                await admin(with_database(server, names[variant]), *run)
        async with contextlib.AsyncExitStack() as stack:
            yield {
                variant: await stack.enter_async_context(
                    Store(with_database(server, database), max_connections=1)
                )
                for variant, database in names.items()
            }
    finally:
        await admin(
            server,
            *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in [*names.values(), template]),
        )


async def compare_trigger(
    name: str,
    prepare: Callable[[Store], Awaitable[None]],
    work: Sequence[list[NewEntry]],
    *,
    vacuum: bool = False,
    check: Callable[[Store], Awaitable[None]] | None = None,
    **setup: object,
) -> dict[str, object]:
    """Benchmark `name`: rows/s of `work` into two clones, with and without its trigger.

    The trigger is task_build_history_`name`. `prepare` fills the migrated template; `vacuum`
    runs VACUUM ANALYZE in each clone first; batches alternate between the clones, so the
    machine's noise falls on both alike; `check` looks at the clone with the trigger afterwards.
    `setup` goes into the result as it is.
    """
    disable = f"ALTER TABLE task_build_history DISABLE TRIGGER task_build_history_{name}"
    async with clones(name, prepare, {"with": (), "without": (disable,)}, vacuum=vacuum) as stores:
        seconds = await time_alternately(list(stores.values()), work)
        if check is not None:
            await check(stores["with"])
    return compared(name, work, seconds, **setup)


def compared(
    name: str, work: Sequence[list[NewEntry]], seconds: Sequence[float], **setup: object
) -> dict[str, object]:
    """The result of timing `work` with `name` and without: rows/s of each, and their ratio."""
    timed = work[WARM_UP_BATCHES:]
    with_rate, without_rate = (sum(len(batch) for batch in timed) / s for s in seconds)
    return headed(
        name,
        batches=len(timed),
        batch_rows=len(timed[0]),
        **setup,
        **{
            f"rows_per_s_with_{name}": round(with_rate),
            f"rows_per_s_without_{name}": round(without_rate),
        },
        ratio=round(with_rate / without_rate, 3),
    )


def comparison_main(
    doc: str | None, run: Callable[[int], Coroutine[Any, Any, dict[str, object]]], title: str
) -> None:
    """The command line of a `compare_trigger` benchmark; `title` is formatted with the result."""

    def table(result: dict[str, object]) -> list[str]:
        name = str(result["benchmark"])
        width = len(f"without {name}") + 2
        return [
            title.format(**result),
            f"  {f'with {name}':<{width}}{result[f'rows_per_s_with_{name}']:>8} rows/s",
            f"  {f'without {name}':<{width}}{result[f'rows_per_s_without_{name}']:>8} rows/s",
            f"  {'ratio':<{width}}{result['ratio']:>8}",
        ]

    run_and_report(doc, BATCHES_OPTION, run, table)


class Stopwatch:
    """Times a drain of `total` messages, from the first one's arrival to the last one handled."""

    def __init__(self, total: int) -> None:
        """Wait for `total` messages."""
        self.total = total
        self.seen = 0
        self._first = 0.0
        self._done = asyncio.Event()

    def arrived(self) -> None:
        """A message arrived: the first starts the clock."""
        if self.seen == 0:
            self._first = time.perf_counter()

    def counted(self) -> int:
        """One more message handled; how many so far."""
        self.seen += 1
        return self.seen

    def finish(self) -> None:
        """Stop the clock if every message is handled."""
        if self.seen == self.total:
            self._done.set()

    async def seconds(self) -> float:
        """Wait for the last message; the seconds since the first."""
        await self._done.wait()
        return time.perf_counter() - self._first


@contextlib.asynccontextmanager
async def main_queue(url: str, topology: Topology, prefetch: int) -> AsyncIterator[AbstractQueue]:
    """The topology's main queue on a channel of its own with `prefetch`; closed on the way out."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        yield await channel.get_queue(topology.queue)
    finally:
        await connection.close()
