"""PostgreSQL failover: the primary goes, a standby is promoted, and nothing acked is lost.

Each test has a primary and a streaming standby of its own (tests/pg_replicas.py). The consumer,
a process of its own, reaches them through one multi-host URL asking for the server that takes
writes. The stall is the time from the fault to the first new row on the promoted server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.settings import Settings
from tests.cluster import free_port
from tests.harness import Bus, ConsumerProcess, count_dead_letters, count_rows, event, wait_for
from tests.pg_replicas import Replicas, Server, replicas
from tests.reliability.conftest import Figures, check_stored

TASKS = 60  # events spread so that no task reaches the 100-entry cap, which would trim rows
BACKLOG = 4000  # waiting when the consumer starts
DURING = 1000  # published while no server takes writes
RESUME_BOUND = 5.0  # seconds from the promotion to the first new row: the bound
NO_WRITABLE_SECONDS = 5.0  # the planned switchover
FENCED_SECONDS = 2.0  # before that, the old primary up but refusing writes
WARNING = "the database streams to standbys, none of them synchronous"
GAUGE = "task_history_database_asynchronous_standbys"
DEFAULT_BACKOFF = Settings.model_fields["retry_backoff_max_seconds"].default


@dataclass(frozen=True)
class Rig:
    """One test's servers: the pair, the consumer's settings, the broker, a scratch folder."""

    pair: Replicas
    settings: Settings
    amqp_url: str
    folder: Path

    @property
    def primary(self) -> Server:
        """The server that takes writes at first."""
        return self.pair.primary

    @property
    def standby(self) -> Server:
        """The server promoted in the end."""
        return self.pair.standby

    def bus(self) -> Bus:
        """A publisher on this test's exchange."""
        return Bus(self.amqp_url, self.settings.topology)

    @contextlib.asynccontextmanager
    async def consumer(self, **update: object) -> AsyncIterator[ConsumerProcess]:
        """`task-history consume` on the pair's multi-host URL; killed on the way out if up."""
        settings = self.settings.model_copy(
            update={"database_url": self.pair.multi_host_url, **update}
        )
        consumer = ConsumerProcess(settings, self.folder / "consumer.log")
        consumer.start()
        try:
            yield consumer
        finally:
            consumer.kill()  # only after a failure: a passing test has stopped it already


@pytest.fixture
async def rig(
    request: pytest.FixtureRequest, settings: Settings, amqp_url: str, tmp_path: Path
) -> AsyncIterator[Rig]:
    """A migrated primary with a synchronous standby (asynchronous when the parameter is False)."""
    async with replicas(synchronous=getattr(request, "param", True)) as pair:
        yield Rig(pair, settings, amqp_url, tmp_path)


async def new_tasks(server: Server, count: int) -> list[uuid.UUID]:
    """Create `count` tasks on `server`; their ids."""
    ids = [uuid.uuid4() for _ in range(count)]
    connection = await asyncpg.connect(server.url())
    try:
        await connection.executemany("INSERT INTO tasks (id) VALUES ($1)", [(i,) for i in ids])
    finally:
        await connection.close()
    return ids


async def publish(bus: Bus, tasks: list[uuid.UUID], count: int, *, first: int) -> list[uuid.UUID]:
    """Publish `count` events over `tasks`, numbered from `first` (distinct contents); their ids."""
    ids = [uuid.uuid4() for _ in range(count)]
    await bus.publish_many(
        event(tasks[n % len(tasks)], f"event {first + n}", id=str(ids[n])) for n in range(count)
    )
    return ids


async def rows_on(server: Server) -> int:
    """How many history rows `server` holds (a standby answers reads too)."""
    return await count_rows(server.url())


async def fence(server: Server) -> None:
    """Make `server` refuse writes, in its open sessions too: a primary about to hand over."""
    connection = await asyncpg.connect(server.url("postgres"))
    try:
        await connection.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await connection.execute("SELECT pg_reload_conf()")
    finally:
        await connection.close()


async def stays_up(consumer: ConsumerProcess, seconds: float) -> None:
    """Watch the consumer for `seconds`; fail with its log if it exits meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert consumer.process is not None
        assert consumer.process.poll() is None, f"the consumer exited:\n{consumer.log()}"
        await asyncio.sleep(0.1)


async def promote(pair: Replicas) -> float:
    """Promote the standby; when the promotion began (a Unix time, as the servers keep)."""
    began = time.time()
    await pair.standby.promote()
    return began


async def first_row_after(server: Server, moment: float) -> float:
    """When `server` committed its first history row after `moment` (both Unix times).

    Read from the commit timestamps the servers keep, so polling adds nothing to the stall.
    """
    first = await server.first_commit_after(moment)
    assert first is not None, f"no row committed after {moment}"
    return first


async def drained(consumer: ConsumerProcess, server: Server, bus: Bus, *, rows: int) -> int:
    """Wait until `server` holds `rows` rows and the queue is empty; the dead letters, all told.

    Fails at once, with the consumer's log, if the consumer exits meanwhile.
    """

    async def stored() -> int:
        assert consumer.process is not None
        code = consumer.process.poll()
        assert code is None, f"the consumer exited {code}:\n{consumer.log()}"
        return await rows_on(server)

    await wait_for(stored, lambda n: n == rows, timeout=120, what=f"{rows} rows stored")
    await wait_for(lambda: bus.depth(bus.topology.queue), lambda n: n == 0, timeout=60)
    in_queue = await bus.depth(bus.topology.dead_letter_queue)
    return in_queue + await count_dead_letters(server.url())


async def stopped(consumer: ConsumerProcess) -> str:
    """SIGTERM the consumer; its log, once it exited 0 having written only JSON lines."""
    consumer.signal(signal.SIGTERM)
    code = await consumer.exit_code(timeout=60)
    log = consumer.log()
    assert code == 0, log
    assert all(line.startswith("{") for line in log.splitlines()), f"a line not in JSON:\n{log}"
    return log


async def checked_on(server: Server, ids: list[uuid.UUID], figures: Figures, *, dead: int) -> None:
    """Every id stored once on `server`, nothing dead-lettered; recorded in `figures`."""
    connection = await asyncpg.connect(server.url())
    try:
        await check_stored(connection, ids, figures, dead=dead)
    finally:
        await connection.close()


async def logged(consumer: ConsumerProcess, text: str, *, timeout: float = 30) -> None:
    """Wait until the consumer logs `text`; fail with its log if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while text not in (log := consumer.log()):
        assert consumer.process is not None
        code = consumer.process.poll()
        assert code is None, f"the consumer exited {code} before logging {text!r}:\n{log}"
        assert time.monotonic() < deadline, f"nothing logged {text!r} in {timeout:g} s:\n{log}"
        await asyncio.sleep(0.1)


def log_lines(log: str) -> list[dict[str, object]]:
    """The consumer's JSON log lines, parsed."""
    return [json.loads(line) for line in log.splitlines()]


def errors_logged(log: str) -> list[str]:
    """The `error` field of every log line that has one."""
    return [str(line["error"]) for line in log_lines(log) if "error" in line]


def record(figures: Figures, *, stall: float, note: str) -> None:
    """Record one fault and its stall (from the fault to the first new row), with a note."""
    figures.faults = 1
    figures.stall_seconds = round(stall, 2)
    figures.note = note


class TestPromotionWhileDraining:
    """The primary stops mid-drain and the standby is promoted: the consumer follows."""

    async def test_resumes_within_five_seconds_and_stores_everything_once(
        self, figures: Figures, rig: Rig
    ) -> None:
        """Writes resume on the promoted server within 5 s of the promotion; nothing lost."""
        tasks = await new_tasks(rig.primary, TASKS)
        async with rig.bus() as bus:
            ids = await publish(bus, tasks, BACKLOG, first=0)
            # The bound is the for a deployment as shipped: the default retry backoff,
            # not the suite's shorter one.
            async with rig.consumer(retry_backoff_max_seconds=DEFAULT_BACKOFF) as consumer:
                at_fault = await wait_for(
                    lambda: rows_on(rig.primary), lambda n: n >= BACKLOG // 4, timeout=60
                )
                fault = time.time()
                await rig.primary.stop(mode="fast")
                ids += await publish(bus, tasks, DURING, first=BACKLOG)
                promoted = await promote(rig.pair)
                dead = await drained(consumer, rig.standby, bus, rows=len(ids))
                log = await stopped(consumer)
        resumed = await first_row_after(rig.standby, promoted)
        after_promotion = resumed - promoted
        record(
            figures,
            stall=resumed - fault,
            note=f"primary stopped with {at_fault} of {BACKLOG} stored, {DURING} published"
            f" meanwhile; first row {after_promotion:.2f} s after the promotion",
        )
        await checked_on(rig.standby, ids, figures, dead=dead)
        assert after_promotion <= RESUME_BOUND, log
        assert errors_logged(log), f"the fault went unnoticed:\n{log}"


class TestNoWritableServer:
    """A planned switchover: for a while no server takes writes, and the consumer waits."""

    async def test_the_consumer_waits_and_resumes(self, figures: Figures, rig: Rig) -> None:
        """Fenced, then stopped for 5 s with only the standby up: still running, then resumes."""
        tasks = await new_tasks(rig.primary, TASKS)
        async with rig.bus() as bus:
            ids = await publish(bus, tasks, BACKLOG // 2, first=0)
            async with rig.consumer() as consumer:
                await wait_for(
                    lambda: rows_on(rig.primary), lambda n: n >= BACKLOG // 8, timeout=60
                )
                # Both servers up and read-only: no host matches read-write.
                fault = time.time()
                await fence(rig.primary)
                ids += await publish(bus, tasks, DURING, first=BACKLOG)
                await stays_up(consumer, FENCED_SECONDS - (time.time() - fault))
                # Then only the standby, read-only, for the 5 s.
                await rig.primary.stop(mode="fast")
                await stays_up(consumer, NO_WRITABLE_SECONDS)
                promoted = await promote(rig.pair)
                dead = await drained(consumer, rig.standby, bus, rows=len(ids))
                log = await stopped(consumer)
        resumed = await first_row_after(rig.standby, promoted)
        errors = errors_logged(log)
        record(
            figures,
            stall=resumed - fault,
            note=f"fenced {FENCED_SECONDS:g} s, then stopped {NO_WRITABLE_SECONDS:g} s;"
            f" {resumed - promoted:.2f} s after the promotion; {len(errors)} errors logged",
        )
        await checked_on(rig.standby, ids, figures, dead=dead)
        # The fenced primary, then nothing writable: asyncpg's TargetServerAttributeNotMatched.
        assert any("target attribute" in error for error in errors), log
        assert any("read-only transaction" in error for error in errors), log


class TestStartingWithoutWritableServer:
    """`task-history consume` started while no server takes writes waits for one."""

    @pytest.mark.parametrize("primary", ["stopped", "read-only"])
    async def test_it_waits_then_consumes(self, figures: Figures, rig: Rig, primary: str) -> None:
        """It logs "server unavailable; retrying" instead of exiting, and consumes once promoted."""
        tasks = await new_tasks(rig.primary, TASKS)
        async with rig.bus() as bus:
            ids = await publish(bus, tasks, DURING, first=0)
            fault = time.time()
            if primary == "stopped":
                await rig.primary.stop(mode="fast")
            else:
                await fence(rig.primary)
            async with rig.consumer() as consumer:
                await logged(consumer, "server unavailable; retrying")
                await stays_up(consumer, 2)
                assert '"consuming"' not in consumer.log()
                promoted = await promote(rig.pair)
                dead = await drained(consumer, rig.standby, bus, rows=len(ids))
                log = await stopped(consumer)
        resumed = await first_row_after(rig.standby, promoted)
        waits = [
            line
            for line in log_lines(log)
            if line["event"] == "server unavailable; retrying" and line["server"] == "database"
        ]
        record(
            figures,
            stall=resumed - fault,
            note=f"started with the primary {primary}; {len(waits)} retries logged;"
            f" {resumed - promoted:.2f} s after the promotion",
        )
        await checked_on(rig.standby, ids, figures, dead=dead)
        assert waits, log
        assert '"consuming"' in log
        if primary == "read-only":
            assert all("target attribute" in str(line["error"]) for line in waits), waits


class TestAsynchronousStandbyWarning:
    """At start-up, a standby that commits don't wait for is named as a risk of loss."""

    @pytest.mark.parametrize(
        "rig", [False, True], ids=["asynchronous", "synchronous"], indirect=True
    )
    async def test_one_warning_line_and_the_gauge(self, figures: Figures, rig: Rig) -> None:
        """Asynchronous: one warning line and the gauge at 1; synchronous: no line, gauge at 0."""
        tasks = await new_tasks(rig.primary, 10)
        port = free_port()
        async with (
            rig.bus() as bus,
            rig.consumer(metrics_host="127.0.0.1", metrics_port=port) as consumer,
        ):
            await logged(consumer, '"consuming"')
            gauge = await scrape(port, GAUGE)
            ids = await publish(bus, tasks, 100, first=0)
            dead = await drained(consumer, rig.primary, bus, rows=len(ids))
            log = await stopped(consumer)
        warned = [line for line in log_lines(log) if str(line["event"]).startswith(WARNING)]
        kind = "synchronous" if rig.pair.synchronous else "asynchronous"
        figures.note = f"{kind} standby: {len(warned)} warning line(s), {GAUGE} {gauge:g}"
        await checked_on(rig.primary, ids, figures, dead=dead)
        if rig.pair.synchronous:
            assert (len(warned), gauge) == (0, 0), log
        else:
            assert (len(warned), gauge) == (1, 1), log
            assert warned[0]["level"] == "warning"
            assert warned[0]["standbys"] == 1
            assert "synchronous_standby_names" in str(warned[0]["event"])


async def scrape(port: int, name: str) -> float:
    """The value of the unlabelled metric `name` on the consumer's /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    assert len(values) == 1, f"{name} appears {len(values)} times on /metrics"
    return values[0]
