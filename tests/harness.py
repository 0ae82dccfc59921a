"""Driving the consumer from tests: publish, run it (in-process or as a process), wait, inspect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from consumer.settings import Settings
from consumer.topology import Topology
from consumer.worker import Worker
from tests.helpers import new_task

T = TypeVar("T")
REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "amqp": 5672}


def event(task_id: uuid.UUID, content: str = "did something", **fields: object) -> dict[str, Any]:
    """A valid event body for `task_id`, with `fields` added or replaced."""
    return {"task_id": str(task_id), "context_type": "agent_turn", "content": content, **fields}


class Bus:
    """A test's own connection to the broker: publish like an agent, read the dead letters."""

    def __init__(self, url: str, topology: Topology) -> None:
        """Use `topology`'s names on the broker at `url`."""
        self._url = url
        self.topology = topology
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def __aenter__(self) -> Self:
        """Connect, with publisher confirms."""
        self._connection = await aio_pika.connect(self._url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Disconnect."""
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> aio_pika.abc.AbstractConnection:
        """The open connection (for a second channel)."""
        assert self._connection is not None
        return self._connection

    @property
    def channel(self) -> aio_pika.abc.AbstractChannel:
        """The open channel."""
        assert self._channel is not None
        return self._channel

    async def publish(
        self,
        body: dict[str, Any] | bytes,
        *,
        routing_key: str | None = None,
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish one message to the history exchange, persistent, confirmed."""
        if isinstance(body, dict):
            routing_key = routing_key or f"history.{body.get('context_type', 'unknown')}"
            body = json.dumps(body).encode()
        exchange = await self.channel.get_exchange(self.topology.exchange)
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                headers=headers,
            ),
            routing_key=routing_key or "history.agent_turn",
        )

    async def publish_many(self, bodies: Iterable[dict[str, Any] | bytes]) -> None:
        """Publish in order, confirms overlapping in windows of 200."""
        pending: list[Awaitable[None]] = []
        for body in bodies:
            pending.append(self.publish(body))
            if len(pending) == 200:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)

    async def depth(self, queue: str) -> int:
        """The exact number of ready messages in `queue` (a passive declare)."""
        declared = await self.channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count

    async def dead_letters(self) -> list[AbstractIncomingMessage]:
        """Take every message in the dead-letter queue, in order."""
        return await self.take_all(self.topology.dead_letter_queue)

    async def take_all(self, queue_name: str) -> list[AbstractIncomingMessage]:
        """Take every message in `queue_name`, in order."""
        queue = await self.channel.declare_queue(queue_name, passive=True)
        taken = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            taken.append(message)
        return taken


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float = 30,
    what: str = "condition",
    interval: float = 0.1,
) -> T:
    """Poll `probe` every `interval` s until `done(value)`; on timeout fail with what it saw."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; last saw {value!r}"
            )
        await asyncio.sleep(interval)


async def count_rows(database_url: str, table: str = "task_build_history") -> int:
    """How many rows the database holds in `table` (the history, unless told otherwise)."""
    connection = await asyncpg.connect(database_url)
    try:
        return int(
            await connection.fetchval(f"SELECT count(*) FROM {table}")
        )  # our own table names
    finally:
        await connection.close()


DEAD_LETTERS = "task_build_history_dead_letters"


async def count_dead_letters(database_url: str) -> int:
    """How many dead letters the database holds."""
    return await count_rows(database_url, DEAD_LETTERS)


async def dead_letter_rows(database_url: str) -> list[dict[str, Any]]:
    """Every dead letter, oldest first, its headers and properties decoded from JSON."""
    connection = await asyncpg.connect(database_url)
    try:
        records = await connection.fetch(f"SELECT * FROM {DEAD_LETTERS} ORDER BY id")
    finally:
        await connection.close()
    rows = [dict(record.items()) for record in records]
    for row in rows:
        row["headers"], row["properties"] = (
            json.loads(row["headers"]),
            json.loads(row["properties"]),
        )
    return rows


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Worker]:
    """A consumer running in this process until the block ends; then stopped and awaited."""
    worker = Worker.from_settings(settings)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        if not task.done():
            worker.stop()
        await asyncio.wait_for(task, timeout=60)


def settings_environment(settings: Settings) -> dict[str, str]:
    """`settings` as TASK_HISTORY_* variables, for a consumer in another process."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("TASK_HISTORY_")
    }
    for name, value in settings.model_dump(exclude_none=True).items():
        environment[f"TASK_HISTORY_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return environment


async def start_command(
    *args: str, environment: dict[str, str] | None = None, output: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """`task-history ARGS` started in a process of its own from the repository, no stdin."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        cwd=REPOSITORY,
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=output,
        stderr=output,
    )


@contextlib.asynccontextmanager
async def command_running(
    *args: str, environment: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`task-history ARGS` started for the block, killed at its end if it still runs then."""
    process = await start_command(*args, environment=environment)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_command(
    *args: str, environment: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `task-history ARGS` to its end (at most 120 s); (exit code, stdout, stderr)."""
    process = await start_command(*args, environment=environment)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@dataclass
class ConsumerProcess:
    """`task-history consume` in a process of its own, its log kept in a file."""

    settings: Settings
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start it."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "consumer", "consume"],
            cwd=self.log_path.parent,
            env=settings_environment(self.settings),
            stdout=log,
            stderr=log,
        )
        log.close()

    def signal(self, number: int) -> None:
        """Send it a signal."""
        assert self.process is not None
        self.process.send_signal(number)

    async def exit_code(self, *, timeout: float = 60) -> int:
        """Wait for it to exit; its exit code."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"consumer still running after {timeout} s:\n{self.log()}")
            await asyncio.sleep(0.05)
        return code

    def log(self) -> str:
        """What it logged so far."""
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """Its JSON log lines so far."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def kill(self) -> None:
        """Make sure it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def drain_in_process(
    settings: Settings, bus: Bus, log: Path, *, rows: int, timeout: float = 60
) -> str:
    """A new consumer process stores until `rows` are in and the queue is empty; exit 0; its log."""
    consumer = ConsumerProcess(settings, log)
    consumer.start()
    try:
        await wait_for(
            lambda: count_rows(settings.database_url), lambda n: n == rows, timeout=timeout
        )
        await wait_for(lambda: bus.depth(bus.topology.queue), lambda n: n == 0)
    finally:
        consumer.signal(signal.SIGTERM)
        assert await consumer.exit_code() == 0, consumer.log()
    return consumer.log()


async def signal_mid_stream(
    settings: Settings, log: Path, number: int, *, stored: int
) -> tuple[int, str]:
    """Start a consumer process; signal it once over `stored` rows are in; (exit code, log)."""
    consumer = ConsumerProcess(settings, log)
    consumer.start()
    try:
        await wait_for(lambda: count_rows(settings.database_url), lambda n: n > stored)
        consumer.signal(number)
        return await consumer.exit_code(timeout=30), consumer.log()
    finally:
        consumer.kill()


@contextlib.asynccontextmanager
async def replicas(
    settings: Settings, folder: Path, count: int
) -> AsyncIterator[list[ConsumerProcess]]:
    """`count` consumer processes on small batches, all subscribed; SIGTERM and awaited after."""
    small = settings.model_copy(update={"batch_size": 50, "prefetch": 100})
    consumers = [ConsumerProcess(small, folder / f"c{n}.log") for n in range(count)]
    for consumer in consumers:
        consumer.start()
    try:
        await asyncio.sleep(1.5)  # every one subscribed, so each gets a share
        yield consumers
    finally:
        for consumer in consumers:
            consumer.signal(signal.SIGTERM)
        for consumer in consumers:
            await consumer.exit_code()


class TcpProxy:
    """A TCP forwarder the test can cut, to play an outage between the consumer and a server."""

    def __init__(self, host: str, port: int) -> None:
        """Forward to host:port."""
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    async def start(self) -> None:
        """Listen (on the same port again after a cut)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def freeze(self) -> None:
        """Stop forwarding bytes, closing nothing: a network partition, as a client sees it."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again."""
        self._flowing.set()

    async def heal(self) -> None:
        """Forward again after a cut or a freeze, listening on the same port."""
        self.thaw()
        if self._server is None:
            await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    await self._flowing.wait()
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by the local proxy's."""
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{port}"))


async def proxy_to(url: str) -> TcpProxy:
    """A started TcpProxy to the server at `url` (its scheme's usual port if it names none)."""
    target = urlsplit(url)
    port = target.port or DEFAULT_PORTS.get(target.scheme, 0)
    proxy = TcpProxy(target.hostname or "localhost", port)
    await proxy.start()
    return proxy


async def proxied(
    settings: Settings, server: Literal["database_url", "amqp_url"], **update: object
) -> tuple[TcpProxy, Settings]:
    """A started proxy to the `server` URL of `settings`; `settings` through it, with `update`."""
    url = getattr(settings, server)
    proxy = await proxy_to(url)
    return proxy, settings.model_copy(update={server: through(url, proxy.port), **update})


async def backlog(bus: Bus, sql: asyncpg.Connection, count: int, tasks: int) -> list[uuid.UUID]:
    """Publish `count` events with ids over `tasks` new tasks (below the cap); return the ids."""
    task_ids = [await new_task(sql) for _ in range(tasks)]
    ids = [uuid.uuid4() for _ in range(count)]
    await bus.publish_many(
        event(task_ids[n % tasks], f"event {n}", id=str(ids[n])) for n in range(count)
    )
    return ids


async def assert_stored_exactly_once(sql: asyncpg.Connection, ids: list[uuid.UUID]) -> None:
    """Every id is in the table, and nothing else is."""
    stored = await sql.fetch("SELECT id FROM task_build_history")
    assert len(stored) == len(ids)
    assert {row["id"] for row in stored} == set(ids)


async def stored_twice(sql: asyncpg.Connection) -> int:
    """Rows beyond the first of the same event (task and content): a redelivery stored again.

    Events published by `backlog` differ in task or content, and the primary key already stops
    a known id twice: this catches a copy that got through under another id.
    """
    return int(
        await sql.fetchval(
            "SELECT count(*) - count(DISTINCT (task_id, content)) FROM task_build_history"
        )
    )
