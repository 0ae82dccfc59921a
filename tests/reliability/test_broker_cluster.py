"""A three-node RabbitMQ cluster under a consumer draining 40,000 events: nodes die or go silent.

Each test publishes a backlog, starts `task-history consume` with all three nodes' URLs (its
own node first), and mid-drain injects one fault while a publisher on a surviving node keeps
sending about 200 events a second. Every event must be stored once, none dead-lettered; the
longest time without a new stored row (the stall) is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Self

import aiohttp
import asyncpg
import pytest

from consumer.broker.client import Broker
from consumer.settings import Settings, load_settings
from consumer.topology import Topology
from tests.cluster import free_port
from tests.conftest import unique_name
from tests.harness import (
    Bus,
    ConsumerProcess,
    TcpProxy,
    backlog,
    count_dead_letters,
    event,
    run_command,
    settings_environment,
    wait_for,
)
from tests.helpers import new_task
from tests.rabbit_cluster import Node, RabbitCluster, rabbit_cluster
from tests.reliability.conftest import Figures, check_stored

BACKLOG = 40_000
BACKLOG_TASKS = 500  # 80 events each: under the 100 a task keeps
RATE = 200  # events a second published during the fault
PER_TASK = 80
FAULT_AT = 10_000  # rows stored before the fault: mid-drain
RESUME_LIMIT = 10.0  # seconds: the consumer resumes on another node within this
FREEZE_SECONDS = 30.0
NOT_READY_LIMIT = 15.0  # seconds from the freeze to /readyz saying "not ready"
DRAIN_TIMEOUT = 180.0
# The test's publisher logs in as its own user, so that the consumer's connections (guest)
# can be told apart from it in the broker's list.
PUBLISHER = ("publisher", "publisher")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    """Three nodes of the broker under test, clustered, for this module; removed after it."""
    with rabbit_cluster(size=3) as started:
        first = started.nodes[0]
        user, password = PUBLISHER
        started.ctl(first, "add_user", user, password)
        started.ctl(first, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield started


@dataclass
class Scene:
    """One test's cluster, names, database and consumer settings (all three URLs, r1 first)."""

    cluster: RabbitCluster
    topology: Topology
    settings: Settings
    sql: asyncpg.Connection
    tmp_path: Path

    def publisher_url(self, node: Node) -> str:
        """`node`'s URL for the test's publisher."""
        user, password = PUBLISHER
        return node.url.replace("guest:guest@", f"{user}:{password}@")


@pytest.fixture
async def scene(
    cluster: RabbitCluster, database_url: str, sql: asyncpg.Connection, tmp_path: Path
) -> AsyncIterator[Scene]:
    """Every node up; this test's queues declared by `task-history migrate` through r2.

    r2 then leads the quorum queue: the consumer's node (r1), the queue's leader (r2) and the
    publisher's node (r3) are three different nodes, so each test kills only what it means to.
    """
    await asyncio.to_thread(cluster.heal)
    r1, r2, r3 = cluster.nodes
    names = Topology.named(unique_name("th"))
    settings = load_settings(
        database_url=database_url,
        amqp_url=cluster.urls(r1, r2, r3),
        exchange=names.exchange,
        queue=names.queue,
        dead_letter_exchange=names.dead_letter_exchange,
        dead_letter_queue=names.dead_letter_queue,
        retry_queue=names.retry_queue,
        unknown_task_retry_seconds=0,
        expire_interval_seconds=0,
        retry_backoff_max_seconds=1,
        log_format="json",
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
    )
    through_r2 = settings_environment(settings.model_copy(update={"amqp_url": r2.url}))
    code, out, err = await run_command("migrate", environment=through_r2)
    assert code == 0, out + err
    # RabbitMQ places a new quorum queue's leader on the declaring node unless configured
    # otherwise: make sure, whatever the version's default.
    await asyncio.to_thread(cluster.move_leader, names.queue, r2)
    yield Scene(cluster, names, settings, sql, tmp_path)
    await asyncio.to_thread(cluster.heal)
    async with Broker(r3.url, topology=names) as broker:
        await broker.delete()


class StoredRows:
    """Counts the stored rows every 0.1 s on a connection of its own; notes when they grew."""

    def __init__(self, database_url: str) -> None:
        """Count in the database at `database_url`."""
        self._database_url = database_url
        self.count = 0
        self.grew: list[float] = []  # monotonic times at which the count had grown
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Start counting."""
        connection = await asyncpg.connect(self._database_url)
        self._task = asyncio.create_task(self._count(connection))
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop counting."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _count(self, connection: asyncpg.Connection) -> None:
        try:
            while True:
                count = await connection.fetchval("SELECT count(*) FROM task_build_history")
                if count > self.count:
                    self.count = count
                    self.grew.append(time.monotonic())
                await asyncio.sleep(0.1)
        finally:
            await connection.close()

    async def reach(self, rows: int, *, timeout: float, what: str) -> None:
        """Wait until at least `rows` rows are stored."""

        async def counted() -> int:
            return self.count

        await wait_for(counted, lambda n: n >= rows, timeout=timeout, what=what)

    def stall_since(self, fault: float) -> float:
        """The longest time without a new row, from `fault` until the last row came."""
        times = [fault, *(moment for moment in self.grew if moment > fault)]
        return max((later - earlier for earlier, later in itertools.pairwise(times)), default=0.0)


async def publish_steadily(
    bus: Bus, task_ids: list[uuid.UUID], *, seconds: float, rate: int = RATE
) -> list[uuid.UUID]:
    """Publish about `rate` events a second for `seconds`, each confirmed; their ids."""
    ids: list[uuid.UUID] = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        # Catch up after a slow confirm rather than fall behind the rate.
        due = [uuid.uuid4() for _ in range(int(elapsed * rate) + 1 - len(ids))]
        await asyncio.gather(
            *(
                bus.publish(event(task_ids[n % len(task_ids)], f"steady {n}", id=str(event_id)))
                for n, event_id in enumerate(due, start=len(ids))
            )
        )
        ids += due
        await asyncio.sleep(0.05)
    return ids


@dataclass
class Drain:
    """One drain through a fault: what was published, what the consumer did, what was seen."""

    scene: Scene
    bus: Bus
    rows: StoredRows
    consumer: ConsumerProcess
    ids: list[uuid.UUID]
    steady_tasks: list[uuid.UUID]
    fault_at: float = 0.0
    steady: list[uuid.UUID] = field(default_factory=list)
    steady_seconds: float = 0.0

    def fault(self) -> None:
        """Note that the fault happens now."""
        self.fault_at = time.monotonic()

    async def publish_during(self, seconds: float) -> None:
        """Publish at RATE for `seconds` through the publisher's surviving node."""
        started = time.monotonic()
        self.steady = await publish_steadily(self.bus, self.steady_tasks, seconds=seconds)
        self.steady_seconds = time.monotonic() - started

    @property
    def rate_note(self) -> str:
        """How many events were published during the fault, and how fast."""
        per_second = len(self.steady) / self.steady_seconds if self.steady_seconds else 0
        return f"{len(self.steady)} events at {per_second:.0f}/s during the fault"


@contextlib.asynccontextmanager
async def draining(
    scene: Scene, figures: Figures, *, steady_seconds: float
) -> AsyncIterator[Drain]:
    """Backlog published, consumer started and FAULT_AT rows stored; then everything stored.

    The block injects the fault (calling `fault()`) and `publish_during`; on the way out
    every event must be stored, the queue empty, and the consumer must stop with exit 0; the
    figures get the counts and the stall.
    """
    r3 = scene.cluster.nodes[2]
    consumer = ConsumerProcess(scene.settings, scene.tmp_path / "consumer.log")
    async with Bus(scene.publisher_url(r3), scene.topology) as bus:
        ids = await backlog(bus, scene.sql, BACKLOG, tasks=BACKLOG_TASKS)
        steady_tasks = [
            await new_task(scene.sql)
            for _ in range(math.ceil(RATE * (steady_seconds + 1) / PER_TASK) + 1)
        ]
        async with StoredRows(scene.settings.database_url) as rows:
            consumer.start()
            try:
                await rows.reach(FAULT_AT, timeout=120, what=f"{FAULT_AT} rows before the fault")
                drain = Drain(scene, bus, rows, consumer, ids, steady_tasks)
                yield drain
                drain.ids += drain.steady
                await rows.reach(len(drain.ids), timeout=DRAIN_TIMEOUT, what="every event stored")
                await wait_for(
                    lambda: bus.depth(scene.topology.queue), lambda n: n == 0, timeout=60
                )
            finally:
                consumer.signal(signal.SIGTERM)
                code = await consumer.exit_code(timeout=60)
        assert code == 0, consumer.log()
        # Dead letters: those the consumer stored, and any still in the broker's queue.
        dead = await count_dead_letters(scene.settings.database_url)
        dead += await bus.depth(scene.topology.dead_letter_queue)
    figures.faults = 1
    figures.stall_seconds = round(rows.stall_since(drain.fault_at), 2)
    await check_stored(scene.sql, drain.ids, figures, dead=dead)


def consumer_nodes(cluster: RabbitCluster) -> list[str]:
    """The nodes the consumer is connected to now (its connections log in as guest)."""
    listing = cluster.ctl(cluster.alive(), "list_connections", "user", "port", "--no-table-headers")
    ports = {node.port: node.name for node in cluster.nodes}
    found = []
    for line in listing.splitlines():
        user, _, port = line.partition("\t")
        if user == "guest" and port.strip().isdigit():
            found.append(ports.get(int(port), f"port {port}"))
    return sorted(found)


class TestNodeKilled:
    """kill -9 of a node in the middle of a drain."""

    async def test_the_consumers_node_killed_it_resumes_on_another(
        self, scene: Scene, figures: Figures
    ) -> None:
        """Its own node killed, the consumer resumes through the next within 10 s; 0 lost."""
        cluster = scene.cluster
        r1, r2, _ = cluster.nodes
        async with draining(scene, figures, steady_seconds=15) as drain:
            assert await asyncio.to_thread(consumer_nodes, cluster) == [r1.name]
            drain.fault()
            await asyncio.to_thread(cluster.kill, r1)
            await drain.publish_during(15)
            resumed_on = await asyncio.to_thread(consumer_nodes, cluster)
        log = drain.consumer.log()
        figures.note = f"killed the consumer's node; resumed on {', '.join(resumed_on)}; "
        figures.note += drain.rate_note
        assert "broker connection lost; reconnecting" in log
        assert "broker connection restored" in log
        assert r1.name not in resumed_on
        assert r2.name in resumed_on, resumed_on  # the next address in its list
        assert figures.stall_seconds is not None
        assert figures.stall_seconds <= RESUME_LIMIT, f"stalled {figures.stall_seconds} s"

    async def test_the_queue_leader_killed_a_short_stall(
        self, scene: Scene, figures: Figures
    ) -> None:
        """The queue's leader, not the consumer's node, killed: a new leader, a short stall."""
        cluster = scene.cluster
        r1, r2, _ = cluster.nodes
        async with draining(scene, figures, steady_seconds=10) as drain:
            leader = await asyncio.to_thread(cluster.leader, scene.topology.queue)
            assert leader is r2
            assert await asyncio.to_thread(consumer_nodes, cluster) == [r1.name]
            drain.fault()
            await asyncio.to_thread(cluster.kill, leader)
            await drain.publish_during(10)
            new_leader = await asyncio.to_thread(cluster.leader, scene.topology.queue)
        figures.note = f"killed the leader {leader.name}; new leader {new_leader.name}; "
        figures.note += drain.rate_note
        assert new_leader is not leader


async def readiness(port: int) -> tuple[int, str]:
    """What /readyz answers on the consumer's metrics port: status and body (0 if no answer)."""
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            return response.status, (await response.text()).strip()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, type(exc).__name__


@dataclass
class ReadinessLog:
    """What /readyz answered from a moment on: each change, with the seconds since."""

    port: int
    since: float
    changes: list[tuple[float, int, str]] = field(default_factory=list)

    async def watch(self) -> None:
        """Ask every 0.25 s until cancelled."""
        while True:
            status, body = await readiness(self.port)
            if not self.changes or self.changes[-1][1:] != (status, body):
                self.changes.append((round(time.monotonic() - self.since, 1), status, body))
            await asyncio.sleep(0.25)

    def first(self, status: int) -> float | None:
        """Seconds from the start to the first answer with `status`, if any came."""
        return next((at for at, seen, _ in self.changes if seen == status), None)

    def ready_again(self) -> float | None:
        """Seconds from the start to the first 200 after a 503, if any came."""
        not_ready = self.first(HTTPStatus.SERVICE_UNAVAILABLE)
        if not_ready is None:
            return None
        return next(
            (at for at, seen, _ in self.changes if seen == HTTPStatus.OK and at > not_ready),
            None,
        )

    def __str__(self) -> str:
        """The changes, one after the other."""
        return "; ".join(f"{at:g} s: {status} {body!r}" for at, status, body in self.changes)


async def ready(port: int) -> bool:
    """Whether /readyz answers 200."""
    status, _ = await readiness(port)
    return status == HTTPStatus.OK


class TestNodeCutOff:
    """The consumer's node cut off from it, silently, for 30 s."""

    async def test_not_ready_within_15_s_then_resumes(self, scene: Scene, figures: Figures) -> None:
        """A frozen connection: /readyz says not ready within 15 s; everything stored after."""
        cluster = scene.cluster
        r1, r2, r3 = cluster.nodes
        # The consumer reaches its node through a proxy that can go silent; its other
        # addresses lead straight to the other nodes.
        proxy = TcpProxy("127.0.0.1", r1.port)
        await proxy.start()
        through_proxy = cluster.urls(r1, r2, r3).replace(
            f"127.0.0.1:{r1.port}/", f"127.0.0.1:{proxy.port}/", 1
        )
        scene.settings = scene.settings.model_copy(update={"amqp_url": through_proxy})
        port = scene.settings.metrics_port
        watch = ReadinessLog(port, since=0.0)
        watching: asyncio.Task[None] | None = None
        try:
            async with draining(scene, figures, steady_seconds=FREEZE_SECONDS + 5) as drain:
                await wait_for(lambda: ready(port), bool, what="ready before the freeze")
                drain.fault()
                proxy.freeze()
                watch.since = drain.fault_at
                watching = asyncio.create_task(watch.watch())
                publishing = asyncio.create_task(drain.publish_during(FREEZE_SECONDS + 5))
                await asyncio.sleep(FREEZE_SECONDS)
                proxy.thaw()
                await publishing
                # Judged below, once the figures are recorded: a consumer stuck "not ready"
                # has still stored everything.
                with contextlib.suppress(AssertionError):
                    await wait_for(lambda: ready(port), bool, timeout=20, what="ready again")
                resumed_on = await asyncio.to_thread(consumer_nodes, cluster)
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            await proxy.cut()
        through = [name.replace(r1.name, f"{r1.name} (through the proxy)") for name in resumed_on]
        not_ready, ready_again = watch.first(HTTPStatus.SERVICE_UNAVAILABLE), watch.ready_again()
        figures.note = (
            f"froze the consumer's node {FREEZE_SECONDS:g} s; not ready after {not_ready} s,"
            f" ready again after {ready_again} s; resumed on {', '.join(through)};"
            f" {drain.rate_note}"
        )
        log = drain.consumer.log()
        assert not_ready is not None, f"/readyz never said not ready: {watch}"
        assert not_ready <= NOT_READY_LIMIT, f"not ready only after {not_ready} s: {watch}"
        assert ready_again is not None, f"/readyz never said ready again: {watch}"
        assert '"not ready"' in log
        assert '"ready again"' in log
