"""Crash points: kill -9 the consumer 20 times while a backlog drains; nothing lost or doubled."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import Awaitable, Callable

from tests.conftest import Env
from tests.harness import (
    Bus,
    ConsumerProcess,
    TcpProxy,
    backlog,
    count_dead_letters,
    count_rows,
    drain_in_process,
    proxied,
    wait_for,
)
from tests.reliability.conftest import Figures, check_stored

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

    async def test_20_kills_while_20000_events_drain(self, env: Env, figures: Figures) -> None:
        """Kills at start-up, mid-stream and between COMMIT and ack; then every event once."""
        seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1 << 30))
        rng = random.Random(seed)
        # The broker connection goes through a proxy the test can freeze: acks sent after a
        # COMMIT then never arrive, which is the window between the two.
        # Small batches and a tight poll put each kill close to its moment, so the 20 kills
        # spread over the backlog instead of a few runs draining it.
        proxy, through_proxy = await proxied(env.settings, "amqp_url", batch_size=100)
        logs: list[str] = []
        moments: list[str] = []

        async def rows() -> int:
            return int(await env.sql.fetchval("SELECT count(*) FROM task_build_history"))

        async with Bus(env.amqp_url, env.topology) as bus:
            ids = await backlog(bus, env.sql, BACKLOG, tasks=400)
            for kill in range(KILLS):
                process = ConsumerProcess(through_proxy, env.tmp_path / f"run{kill}.log")
                try:
                    moments.append(await kill_once(process, kill, rng, proxy, rows))
                finally:
                    process.kill()
                    logs.append(process.log())
            assert await count_rows(env.database_url) < BACKLOG, "drained before the kills"

            last = env.tmp_path / "last.log"
            logs.append(await drain_in_process(env.settings, bus, last, rows=BACKLOG, timeout=90))
            dead = await count_dead_letters(env.database_url)
        await proxy.cut()

        figures.faults = KILLS
        redelivered = sum(absorbed_duplicates(log) for log in logs)
        figures.note = (
            f"seed {seed}; {moments.count('after COMMIT, before ack')} kills between COMMIT and"
            f" ack; {redelivered} redelivered events absorbed"
        )
        await check_stored(env.sql, ids, figures, dead=dead)
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
