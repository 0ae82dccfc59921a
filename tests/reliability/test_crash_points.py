"""Crash points: kill -9 the consumer 20 times while a backlog drains; nothing lost or doubled."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from consumer.settings import Settings
from consumer.topology import Topology
from tests.harness import (
    Bus,
    ConsumerProcess,
    TcpProxy,
    backlog,
    count_rows,
    stored_twice,
    through,
    wait_for,
)
from tests.reliability.conftest import Figures

BACKLOG = 20_000
KILLS = 20
SEED_ENV = "TASK_HISTORY_TEST_SEED"


def absorbed_duplicates(log: str) -> int:
    """Redelivered events the consumer found already stored, from its JSON batch lines."""
    total = 0
    for line in log.splitlines():
        if line.startswith("{") and '"batch"' in line:
            total += int(json.loads(line).get("duplicates", 0))
    return total


class TestCrashPoints:
    """The consumer dies at any moment; a restart finishes the job exactly once."""

    async def test_20_kills_while_20000_events_drain(  # noqa: PLR0913, PLR0917  # fixtures
        self,
        settings: Settings,
        amqp_url: str,
        topology: Topology,
        sql: asyncpg.Connection,
        tmp_path: Path,
        figures: Figures,
    ) -> None:
        """Kills at start-up, mid-stream and between COMMIT and ack; then every event once."""
        seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1 << 30))
        rng = random.Random(seed)
        broker = urlsplit(amqp_url)
        proxy = TcpProxy(broker.hostname or "localhost", broker.port or 5672)
        await proxy.start()
        # The broker connection goes through a proxy the test can freeze: acks sent after a
        # COMMIT then never arrive, which is the window between the two.
        # Small batches and a tight poll put each kill close to its moment, so the 20 kills
        # spread over the backlog instead of a few runs draining it.
        proxied = settings.model_copy(
            update={"amqp_url": through(amqp_url, proxy.port), "batch_size": 100}
        )
        logs: list[str] = []
        moments: list[str] = []

        async def rows() -> int:
            return int(await sql.fetchval("SELECT count(*) FROM task_build_history"))

        async with Bus(amqp_url, topology) as bus:
            ids = await backlog(bus, sql, BACKLOG, tasks=400)
            for kill in range(KILLS):
                process = ConsumerProcess(proxied, tmp_path / f"run{kill}.log")
                try:
                    moments.append(await kill_once(process, kill, rng, proxy, rows))
                finally:
                    process.kill()
                    logs.append(process.log())
            assert await count_rows(settings.database_url) < BACKLOG, "drained before the kills"

            last = ConsumerProcess(settings, tmp_path / "last.log")
            last.start()
            try:
                await wait_for(
                    lambda: count_rows(settings.database_url), lambda n: n == BACKLOG, timeout=90
                )
                await wait_for(lambda: bus.depth(topology.queue), lambda n: n == 0)
            finally:
                last.signal(signal.SIGTERM)
                assert await last.exit_code() == 0, last.log()
            logs.append(last.log())
            dead = await bus.depth(topology.dead_letter_queue)
        await proxy.cut()

        stored = [row["id"] for row in await sql.fetch("SELECT id FROM task_build_history")]
        figures.faults, figures.events = KILLS, BACKLOG
        figures.lost = len(set(ids) - set(stored))
        figures.duplicated = await stored_twice(sql)
        figures.dead_lettered_wrongly = dead
        redelivered = sum(absorbed_duplicates(log) for log in logs)
        figures.note = (
            f"seed {seed}; {moments.count('after COMMIT, before ack')} kills between COMMIT and"
            f" ack; {redelivered} redelivered events absorbed"
        )
        assert (figures.lost, figures.duplicated, figures.dead_lettered_wrongly) == (0, 0, 0)
        assert set(stored) == set(ids)
        assert redelivered > 0, "no kill landed between COMMIT and ack"


async def kill_once(
    process: ConsumerProcess,
    kill: int,
    rng: random.Random,
    proxy: TcpProxy,
    rows: Callable[[], Awaitable[int]],
) -> str:
    """Start the consumer and kill -9 it at a moment chosen by `kill` and `rng`; say which."""
    before = await rows()
    process.start()
    moment = "mid-stream"
    if kill == 0:
        moment = "start-up"
        await asyncio.sleep(rng.uniform(0.05, 0.6))
    elif kill % 4 == 2:  # every fourth kill, from the third on
        moment = "after COMMIT, before ack"
        await wait_for(rows, lambda n: n > before, interval=0.01)
        proxy.freeze()
        at_freeze = await rows()
        await wait_for(
            rows,
            lambda n: n > at_freeze,
            what="a commit whose ack can't reach the broker",
            interval=0.01,
        )
    else:
        target = before + rng.randint(1, 500)
        await wait_for(rows, lambda n: n >= target, interval=0.01)
    process.signal(signal.SIGKILL)
    await process.exit_code()
    if moment == "after COMMIT, before ack":
        await proxy.cut()  # the acks it held die with the connection
        proxy.thaw()
        await proxy.start()
    return moment
