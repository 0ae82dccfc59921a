"""What a fault schedule attacks: two consumers, the links in front of them, and the servers.

Each consumer is a `task-history consume` process of its own, given two broker URLs (two TCP
proxies in front of one private RabbitMQ node) and a two-host database URL (two proxies, one
to each server of a private PostgreSQL primary with a synchronous standby). Every link of every
consumer can be cut or frozen alone; the servers can be restarted, and the primary failed over
to its standby. Nothing here touches the servers the suite shares with other programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from consumer.broker.client import Broker
from consumer.settings import Settings, load_settings
from consumer.topology import Topology
from tests.cluster import free_port
from tests.conftest import unique_name
from tests.harness import ConsumerProcess, TcpProxy, through
from tests.pg_replicas import (
    DATABASE,
    Server,
    rebuild_standby,
    replicas,
    set_synchronous,
    until_streaming,
)
from tests.rabbit_cluster import PrivateBroker
from tests.reliability import exactly_once
from tests.reliability.fault_load import Load, connect, create_tasks

CONSUMERS = 2
READY_TIMEOUT = 90.0  # seconds for a consumer to report ready at start
TERM_TIMEOUT = 90.0  # seconds for SIGTERM to end a consumer: its 30 s deadline, and margin
SAMPLE_EVERY = 0.5  # seconds between two looks at each consumer's /readyz
SETTLE_ROUNDS = 3


@dataclass
class Consumer:
    """One consumer process, its links (two to the broker, two to the database), its /readyz."""

    index: int
    process: ConsumerProcess
    broker_links: tuple[TcpProxy, TcpProxy]
    database_links: tuple[TcpProxy, TcpProxy]
    health_port: int
    # Not running because a fault stopped it (until started again).
    down: bool = True
    # Exits nobody asked for; what SIGTERM ended with once the consumer had started up.
    crashes: list[str] = field(default_factory=list)
    term_codes: list[int] = field(default_factory=list)
    readiness: list[tuple[float, bool]] = field(default_factory=list)
    _log_size: int = 0

    def start(self) -> None:
        """Start the process (again)."""
        self._log_size = self._logged()
        self.process.start()
        self.down = False

    def _logged(self) -> int:
        """The size of its log file so far."""
        path = self.process.log_path
        return path.stat().st_size if path.exists() else 0

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        self.down = True
        self.process.signal(signal.SIGKILL)
        await self.process.exit_code()

    async def terminate(self) -> int:
        """SIGTERM; its exit code, once it exited."""
        self.down = True
        loading = self._logged() == self._log_size
        self.process.signal(signal.SIGTERM)
        code = await self.process.exit_code(timeout=TERM_TIMEOUT)
        # Before its first log line the interpreter is still loading, with no handler yet:
        # the signal's default action ends it, with nothing in hand. Not the contract's case.
        if not (loading and code == -signal.SIGTERM):
            self.term_codes.append(code)
        return code

    def freeze(self) -> None:
        """SIGSTOP: a consumer that stops running without closing anything."""
        self.process.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT."""
        self.process.signal(signal.SIGCONT)

    def restart_if_exited(self) -> None:
        """Record an exit nobody asked for, with the end of its log, and start it again."""
        if self.down or self.process.process is None:
            return
        code = self.process.process.poll()
        if code is None:
            return
        tail = "\n".join(self.process.log().splitlines()[-5:])
        self.crashes.append(f"consumer {self.index} exited {code} at {time.time():.1f}:\n{tail}")
        self.start()

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        """Whether /readyz answers 200 within a second (a frozen or dead process does not)."""
        if self.down:
            return False
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        try:
            async with asyncio.timeout(1), session.get(url) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False


@dataclass
class Rig:
    """The servers, the two consumers and the load, as a schedule finds them."""

    primary: Server
    standby: Server
    broker: PrivateBroker
    topology: Topology
    consumers: list[Consumer]
    load: Load

    # -- server faults ----------------------------------------------------------------------

    async def restart_postgres(self, *, down: float) -> None:
        """Stop the primary at once (no checkpoint: a crash), wait `down` s, start it again."""
        await self.primary.stop(mode="immediate")
        try:
            await asyncio.sleep(down)
        finally:
            await self.primary.start()

    async def fail_over(self, *, decide: float) -> None:
        """The primary crashes; `decide` s later its standby is promoted; the old one rebuilt.

        The promoted server waits for no standby until the old primary, copied afresh from it
        with pg_basebackup, streams again; then commits wait for that standby once more.
        """
        old, new = self.primary, self.standby
        await old.stop(mode="immediate")
        await asyncio.sleep(decide)
        await new.promote()
        await set_synchronous(new, synchronous=False)
        self.primary, self.standby = new, old
        await rebuild_standby(old, primary=new)
        await until_streaming(new, sync_state="async")
        await set_synchronous(new, synchronous=True)
        await until_streaming(new, sync_state="sync")

    async def restart_broker(self, *, down: float) -> None:
        """Stop the broker's application (every connection closed), wait `down` s, start it."""
        await asyncio.to_thread(self.broker.tools.run, "stop_app")
        try:
            await asyncio.sleep(down)
        finally:  # the node is the whole run's: never left stopped
            await asyncio.to_thread(self.broker.tools.run, "start_app")
            await asyncio.to_thread(self.broker.tools.run, "await_startup")

    # -- watching ---------------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Until `stop`: sample each consumer's /readyz, restart one that exited on its own."""
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                for consumer in self.consumers:
                    consumer.restart_if_exited()
                moment = time.time()
                answers = await asyncio.gather(*(c.ready(session) for c in self.consumers))
                for consumer, ready in zip(self.consumers, answers, strict=True):
                    consumer.readiness.append((moment, ready))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)

    async def depth(self) -> int:
        """Messages ready in the events, retry and dead-letter queues, all told."""
        connection = await connect(self.broker.url)
        try:
            channel = await connection.channel()
            total = 0
            for name in (self.topology.queue, self.topology.retry_queue):
                total += (
                    await channel.declare_queue(name, passive=True)
                ).declaration_result.message_count or 0
            dead = await channel.declare_queue(self.topology.dead_letter_queue, passive=True)
            return total + (dead.declaration_result.message_count or 0)
        finally:
            await connection.close()

    # -- the end ----------------------------------------------------------------------------

    async def until_drained(self, *, timeout: float) -> bool:
        """Wait until the audit accounts for every confirmed message and the queues are empty.

        False if `timeout` s passed first (the oracle then says what is missing).
        """
        confirmed = [s for s in self.load.sent if s.confirmed_at is not None]
        valid = sum(1 for s in confirmed if s.expected is None)
        invalid = len(confirmed) - valid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            connection = await asyncpg.connect(self.primary.url())
            try:
                entries, letters = await exactly_once.accounted(connection)
            finally:
                await connection.close()
            if entries >= valid and letters >= invalid and await self.depth() == 0:
                return True
            await asyncio.sleep(1)
        return False

    async def finish(self, *, timeout: float) -> int:
        """Stop both consumers with SIGTERM; how many messages are left in the queues.

        What they held goes back to the queue: while anything is there, they are started and
        drained again, so a late copy is written, and caught, rather than left in a queue.
        """
        for round_ in range(SETTLE_ROUNDS):
            await asyncio.gather(*(consumer.terminate() for consumer in self.consumers))
            left = await self.depth()
            if left == 0 or round_ == SETTLE_ROUNDS - 1:
                break
            for consumer in self.consumers:
                consumer.start()
            await self.until_drained(timeout=timeout)
        return left


def consumer_settings(
    topology: Topology, *, broker_links: list[str], database_url: str, health_port: int
) -> Settings:
    """A consumer as deployed (default batching, backoff and timeouts), on these links.

    Only the unknown-task window is short, so that such messages become dead letters within
    the run, and the expiry job is off: nothing but the cap may delete a row.
    """
    return load_settings(
        database_url=database_url,
        amqp_url=",".join(broker_links),
        exchange=topology.exchange,
        queue=topology.queue,
        dead_letter_exchange=topology.dead_letter_exchange,
        dead_letter_queue=topology.dead_letter_queue,
        retry_queue=topology.retry_queue,
        unknown_task_retry_seconds=2,
        unknown_task_retry_delay_seconds=1,
        expire_interval_seconds=0,
        log_format="json",
        metrics_host="127.0.0.1",
        metrics_port=health_port,
    )


async def _proxy(host: str, port: int) -> TcpProxy:
    proxy = TcpProxy(host, port)
    await proxy.start()
    return proxy


async def _consumer(
    index: int, folder: Path, topology: Topology, broker: PrivateBroker, servers: list[Server]
) -> Consumer:
    """Consumer `index`: its four links started, its process not yet."""
    broker_port = urlsplit(broker.url).port or 0
    broker_links = (
        await _proxy("127.0.0.1", broker_port),
        await _proxy("127.0.0.1", broker_port),
    )
    database_links = (
        await _proxy("127.0.0.1", servers[0].port),
        await _proxy("127.0.0.1", servers[1].port),
    )
    hosts = ",".join(f"127.0.0.1:{link.port}" for link in database_links)
    health_port = free_port()
    settings = consumer_settings(
        topology,
        broker_links=[through(broker.url, link.port) for link in broker_links],
        database_url=f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=read-write",
        health_port=health_port,
    )
    process = ConsumerProcess(settings, folder / f"consumer{index}.log")
    return Consumer(index, process, broker_links, database_links, health_port)


async def _until_ready(consumers: list[Consumer]) -> None:
    """Wait until every consumer's /readyz answers 200; fail with their logs if not."""
    deadline = time.monotonic() + READY_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while not all([await consumer.ready(session) for consumer in consumers]):
            logs = "\n".join(consumer.process.log()[-3000:] for consumer in consumers)
            assert time.monotonic() < deadline, f"consumers not ready:\n{logs}"
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def fault_rig(broker: PrivateBroker, folder: Path, *, seed: int) -> AsyncIterator[Rig]:
    """The servers migrated and audited, the tasks made, both consumers running and ready."""
    topology = Topology.named(unique_name("th_faults"))
    async with Broker(broker.url, topology=topology) as declaring:
        await declaring.declare()
    consumers: list[Consumer] = []
    try:
        async with replicas(synchronous=True) as pair:
            try:
                connection = await asyncpg.connect(pair.primary.url())
                try:
                    await exactly_once.install(connection)
                    mix = await create_tasks(connection, random.Random(f"{seed} load"))
                finally:
                    await connection.close()
                servers = [pair.primary, pair.standby]
                consumers.extend(
                    [
                        await _consumer(n, folder, topology, broker, servers)
                        for n in range(CONSUMERS)
                    ]
                )
                for consumer in consumers:
                    consumer.start()
                await _until_ready(consumers)
                load = Load(broker.url, topology.exchange, mix)
                yield Rig(pair.primary, pair.standby, broker, topology, consumers, load)
            finally:  # before the servers stop
                for consumer in consumers:
                    consumer.process.kill()  # SIGKILL ends a frozen process too
    finally:
        for consumer in consumers:
            for link in (*consumer.broker_links, *consumer.database_links):
                await link.cut()
        async with Broker(broker.url, topology=topology) as deleting:
            await deleting.delete()
