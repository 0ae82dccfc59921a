"""Faults at random, interleaved, over two consumers and both servers; each event exactly once.

75 s of faults in the normal run, always the same schedule. Any length and schedule:
TASK_HISTORY_TEST_FAULT_MINUTES=10 TASK_HISTORY_TEST_FAULT_SEED=7 .venv/bin/pytest
tests/reliability/test_fault_schedule.py (docs/development.md, Reliability tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import asyncpg
import pytest

from tests.rabbit_cluster import PrivateBroker
from tests.reliability import exactly_once as oracle
from tests.reliability.conftest import Figures
from tests.reliability.fault_rig import fault_rig
from tests.reliability.fault_schedule import by_kind, describe_run, inflict, plan

MINUTES = float(os.environ.get("TASK_HISTORY_TEST_FAULT_MINUTES", "1.25"))
NUMBER = int(os.environ.get("TASK_HISTORY_TEST_FAULT_SEED", "3"))
DRAIN_TIMEOUT = 240.0  # seconds for the backlog of the faults to be written once they end


class TestFaultSchedule:
    """Kills, freezes, cuts, restarts and a failover, overlapping: nothing lost or doubled."""

    @pytest.mark.timeout(MINUTES * 60 + 900)
    async def test_every_message_once(
        self,
        private_broker: PrivateBroker,
        tmp_path: Path,
        figures: Figures,
        request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Each confirmed event stored once (or trimmed), each bad one dead-lettered once."""
        # The publisher's attempts to reconnect while the broker restarts: expected, not news.
        caplog.set_level(logging.CRITICAL, logger="aiormq.connection")
        faults = plan(NUMBER, MINUTES * 60)
        async with fault_rig(private_broker, tmp_path, seed=NUMBER) as rig:
            publishing, watching = asyncio.Event(), asyncio.Event()
            load = asyncio.create_task(rig.load.run(publishing))
            watch = asyncio.create_task(rig.watch(watching))
            origin = time.time()
            try:
                inflicted = await inflict(faults, rig)
            finally:
                publishing.set()
                await load
            drained = await rig.until_drained(timeout=DRAIN_TIMEOUT)
            end = time.time()
            watching.set()
            await watch
            left = await rig.finish(timeout=DRAIN_TIMEOUT)
            connection = await asyncpg.connect(rig.primary.url())
            try:
                writes, kept, over_cap = await oracle.read(connection)
            finally:
                await connection.close()
        verdict = oracle.judge(rig.load.sent, writes, kept)
        verdict.tasks_over_cap = over_cap
        windows = [one.window for one in inflicted]
        readiness = {consumer.index: consumer.readiness for consumer in rig.consumers}
        waited = oracle.timing(rig.load.sent, writes, windows, readiness, end=end)
        line = (
            f"seed {NUMBER} ({MINUTES:g} min), {len(inflicted)} faults"
            f" ({by_kind([one.fault for one in inflicted])}), {oracle.summary(verdict, waited)}"
        )
        ran = describe_run(inflicted, origin=origin)
        request.node.user_properties += [("summary", line), ("schedule", ran)]
        figures.faults, figures.events = len(inflicted), verdict.confirmed
        figures.lost, figures.duplicated = len(verdict.lost), verdict.duplicated
        figures.dead_lettered_wrongly = len(verdict.wrongly_dead_lettered)
        figures.stall_seconds = round(waited.longest_stall, 2)
        figures.note = f"seed {NUMBER}, {MINUTES:g} min"
        crashes = [crash for c in rig.consumers for crash in c.crashes]
        bad_exits = [code for c in rig.consumers for code in c.term_codes if code != 0]
        problems = verdict.failures() | {
            name: count
            for name, count in {
                "not drained in time": int(not drained),
                "messages left in the queues": left,
                "exits nobody asked for": len(crashes),
                "SIGTERM exits other than 0": len(bad_exits),
            }.items()
            if count
        }
        copies = oracle.faults_between_copies(writes, windows).most_common()
        assert not problems, (
            f"{problems}\n{line}\n{verdict.examples()}\ncopies written again, by the faults"
            f" between the first write and the copy: {copies}\n{ran}\n" + "\n".join(crashes)
        )
