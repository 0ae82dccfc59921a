"""Faults at random, interleaved, over two consumers and both servers; each event exactly once.

75 s of faults in the normal run, always the same schedule. Any length and schedule:
TASK_HISTORY_FAULT_MINUTES=10 TASK_HISTORY_FAULT_SEED=7 .venv/bin/pytest
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
from tests.reliability.fault_rig import Rig, fault_rig
from tests.reliability.fault_schedule import Inflicted, by_kind, describe_run, inflict, plan

MINUTES = float(os.environ.get("TASK_HISTORY_FAULT_MINUTES", "1.25"))
NUMBER = int(os.environ.get("TASK_HISTORY_FAULT_SEED", "3"))
DRAIN_TIMEOUT = 240.0  # seconds for the backlog of the faults to be written once they end
SHORTEST_STALL = 0.5  # seconds; shorter gaps between writes are the normal pace


# How far a stall or a not-ready span may trail the fault behind it: a stall begins at the
# last write before the fault; /readyz changes at the consumer's next check (every 2 s) and is
# sampled every 0.5 s.
STALL_AFTER = 1.0
NOT_READY_BEFORE = 3.0


def longest_stall(
    sent: list[oracle.Sent], writes: list[oracle.Write], windows: list[oracle.Window], *, end: float
) -> dict[str, float]:
    """The longest stall, by the kind of fault behind it."""
    stalls = [
        (start, stop)
        for start, stop in oracle.stalls(sent, writes, begin=windows[0].started, end=end)
        if stop - start >= SHORTEST_STALL
    ]
    return oracle.longest_by_kind(stalls, windows, after=STALL_AFTER)


def longest_not_ready(rig: Rig, windows: list[oracle.Window]) -> dict[str, float]:
    """The longest time a consumer was not ready, by the kind of fault behind it.

    Only the faults that consumer saw: its own, its links', the servers'.
    """
    longest: dict[str, float] = {}
    for consumer in rig.consumers:
        seen = [w for w in windows if w.consumer in {None, consumer.index}]
        spans = oracle.not_ready(consumer.readiness)
        for kind, seconds in oracle.longest_by_kind(spans, seen, before=NOT_READY_BEFORE).items():
            longest[kind] = max(longest.get(kind, 0.0), seconds)
    return longest


def summary(
    inflicted: list[Inflicted],
    verdict: oracle.Verdict,
    stalls: dict[str, float],
    not_ready: dict[str, float],
    longest_wait: float,
) -> str:
    """The run's figures, in one paragraph."""
    return (
        f"seed {NUMBER} ({MINUTES:g} min), {len(inflicted)} faults"
        f" ({by_kind([one.fault for one in inflicted])}), {verdict.confirmed} events"
        f" ({verdict.invalid} invalid; {verdict.unconfirmed} more not confirmed, "
        f"{verdict.unconfirmed_stored} of them written), lost {len(verdict.lost)}, duplicated"
        f" {verdict.duplicated} (rows {len(verdict.duplicate_rows)}, re-inserted after trim"
        f" {len(verdict.reinserted_after_trim)}, dead letters"
        f" {len(verdict.duplicate_dead_letters)}), wrongly dead-lettered"
        f" {len(verdict.wrongly_dead_lettered)}; longest stall by kind:"
        f" {oracle.figures_by_kind(stalls)}; longest not ready by kind:"
        f" {oracle.figures_by_kind(not_ready)}; longest wait of one event {longest_wait:.1f} s"
    )


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
        stalls = longest_stall(rig.load.sent, writes, windows, end=end)
        longest_wait = oracle.longest_wait(rig.load.sent, writes)
        line = summary(inflicted, verdict, stalls, longest_not_ready(rig, windows), longest_wait)
        ran = describe_run(inflicted, origin=origin)
        request.node.user_properties += [("summary", line), ("schedule", ran)]
        figures.faults, figures.events = len(inflicted), verdict.confirmed
        figures.lost, figures.duplicated = len(verdict.lost), verdict.duplicated
        figures.dead_lettered_wrongly = len(verdict.wrongly_dead_lettered)
        figures.stall_seconds = round(max(stalls.values(), default=0.0), 2)
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
