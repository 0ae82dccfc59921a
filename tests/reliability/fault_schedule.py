"""A randomized schedule of interleaved faults, made from one number, and inflicting it.

The same number and length always give the same schedule: which faults, when each starts, how
long it lasts, which consumer or link it hits. Every kind appears at least once; the rest are
drawn by weight, with start times spread over the length, so several faults overlap at any
moment. Two faults on one target (a consumer, one of its links, the database servers, the
broker) never overlap: the later one waits for the earlier to end, and the times it really ran
are recorded beside the plan.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from tests.reliability.exactly_once import Window
from tests.reliability.fault_rig import CONSUMERS, Rig

MEAN_GAP = 5.0  # seconds between two fault starts, on average


class Kind(StrEnum):
    """What a fault does."""

    KILL = "kill -9"
    TERM = "SIGTERM"
    STOP = "SIGSTOP"
    BROKER_CUT = "broker cut"
    BROKER_FREEZE = "broker freeze"
    DATABASE_CUT = "database cut"
    DATABASE_FREEZE = "database freeze"
    POSTGRES_RESTART = "PostgreSQL restart"
    FAILOVER = "failover"
    BROKER_RESTART = "broker restart"


# Seconds each lasts: a consumer down (kill -9, SIGTERM: after it exited) or frozen, a link
# cut or frozen, a server down, or the time before the standby is promoted (failover).
DURATIONS: dict[Kind, tuple[float, float]] = {
    Kind.KILL: (1, 6),
    Kind.TERM: (1, 6),
    Kind.STOP: (5, 20),
    Kind.BROKER_CUT: (2, 12),
    Kind.BROKER_FREEZE: (5, 20),
    Kind.DATABASE_CUT: (2, 12),
    Kind.DATABASE_FREEZE: (5, 25),
    Kind.POSTGRES_RESTART: (1, 5),
    Kind.FAILOVER: (1, 5),
    Kind.BROKER_RESTART: (1, 5),
}
# How often each is drawn once every kind has appeared: server faults are rarer.
WEIGHTS: dict[Kind, int] = {
    Kind.KILL: 3,
    Kind.TERM: 2,
    Kind.STOP: 2,
    Kind.BROKER_CUT: 2,
    Kind.BROKER_FREEZE: 2,
    Kind.DATABASE_CUT: 2,
    Kind.DATABASE_FREEZE: 2,
    Kind.POSTGRES_RESTART: 1,
    Kind.FAILOVER: 1,
    Kind.BROKER_RESTART: 1,
}
ON_CONSUMER = {Kind.KILL, Kind.TERM, Kind.STOP}
ON_LINK = {Kind.BROKER_CUT, Kind.BROKER_FREEZE, Kind.DATABASE_CUT, Kind.DATABASE_FREEZE}
ON_DATABASE = {Kind.POSTGRES_RESTART, Kind.FAILOVER}


@dataclass(frozen=True)
class Fault:
    """One planned fault: its kind, start (seconds into the schedule), length and target."""

    kind: Kind
    start: float
    duration: float
    consumer: int | None = None
    link: int | None = None

    @property
    def target(self) -> str:
        """What it acts on; two faults on one target never overlap."""
        if self.kind in ON_CONSUMER:
            return f"consumer {self.consumer}"
        if self.kind in ON_LINK:
            server = "broker" if self.kind in {Kind.BROKER_CUT, Kind.BROKER_FREEZE} else "database"
            return f"consumer {self.consumer}'s {server} link {self.link}"
        return "database servers" if self.kind in ON_DATABASE else "broker"

    def __str__(self) -> str:
        """One line of the printed schedule."""
        return f"{self.start:7.1f} s  {self.kind:<18} {self.duration:5.1f} s  {self.target:<28}"


@dataclass(frozen=True)
class Inflicted:
    """A fault as it ran: when it began and ended (Unix times), and what it saw."""

    fault: Fault
    started: float
    ended: float
    note: str = ""

    @property
    def window(self) -> Window:
        """Its kind and span, as the oracle attributes stalls."""
        return Window(self.fault.kind.value, self.started, self.ended, self.fault.consumer)


def plan(number: int, seconds: float) -> list[Fault]:
    """The schedule for `number`, `seconds` long: every kind once, then drawn by weight."""
    rng = random.Random(number)
    count = max(len(Kind), round(seconds / MEAN_GAP))
    kinds = list(Kind) + rng.choices(list(WEIGHTS), list(WEIGHTS.values()), k=count - len(Kind))
    rng.shuffle(kinds)
    starts = sorted(rng.uniform(0, seconds) for _ in kinds)
    faults = []
    for kind, start in zip(kinds, starts, strict=True):
        low, high = DURATIONS[kind]
        faults.append(
            Fault(
                kind=kind,
                start=round(start, 1),
                duration=round(rng.uniform(low, high), 1),
                consumer=rng.randrange(CONSUMERS) if kind in ON_CONSUMER | ON_LINK else None,
                link=rng.randrange(2) if kind in ON_LINK else None,
            )
        )
    return faults


HEADING = f"{'planned':>9}  {'fault':<18} {'for':>7}  {'on':<28}"


def describe(faults: Sequence[Fault]) -> str:
    """The schedule, one fault a line."""
    return "\n".join([HEADING, *(str(fault) for fault in faults)])


def describe_run(inflicted: Sequence[Inflicted], *, origin: float) -> str:
    """The schedule as it ran: each fault beside when it really started (from `origin`)."""
    lines = [f"{HEADING} | {'ran at':>8} {'for':>7}"]
    lines += [
        f"{one.fault} | {one.started - origin:6.1f} s {one.ended - one.started:5.1f} s {one.note}"
        for one in inflicted
    ]
    return "\n".join(lines)


def by_kind(faults: Sequence[Fault]) -> str:
    """`kill -9 3, SIGSTOP 2, ...`, in the order of Kind."""
    counts = Counter(fault.kind for fault in faults)
    return ", ".join(f"{kind} {counts[kind]}" for kind in Kind if counts[kind])


async def inflict(faults: Sequence[Fault], rig: Rig) -> list[Inflicted]:
    """Run the schedule on `rig`, faults overlapping; each undone at its end. What ran, when."""
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    origin = time.monotonic()
    done: list[Inflicted] = []

    async def one(fault: Fault) -> None:
        await asyncio.sleep(max(0.0, origin + fault.start - time.monotonic()))
        async with locks[fault.target]:
            started = time.time()
            note = await _apply(fault, rig)
            done.append(Inflicted(fault, started, time.time(), note))

    async with asyncio.TaskGroup() as group:
        for fault in faults:
            group.create_task(one(fault))
    return sorted(done, key=lambda inflicted: inflicted.started)


async def _apply(fault: Fault, rig: Rig) -> str:
    """Inflict one fault and undo it after its duration; a note on what was seen, if any."""
    if fault.kind is Kind.POSTGRES_RESTART:
        await rig.restart_postgres(down=fault.duration)
    elif fault.kind is Kind.FAILOVER:
        await rig.fail_over(decide=fault.duration)
    elif fault.kind is Kind.BROKER_RESTART:
        await rig.restart_broker(down=fault.duration)
    elif fault.kind in ON_LINK:
        await _on_link(fault, rig)
    else:
        return await _on_consumer(fault, rig)
    return ""


async def _on_link(fault: Fault, rig: Rig) -> None:
    """Cut or freeze one link of one consumer for the fault's duration."""
    assert fault.consumer is not None
    assert fault.link is not None
    consumer = rig.consumers[fault.consumer]
    broker = fault.kind in {Kind.BROKER_CUT, Kind.BROKER_FREEZE}
    link = (consumer.broker_links if broker else consumer.database_links)[fault.link]
    if fault.kind in {Kind.BROKER_CUT, Kind.DATABASE_CUT}:
        await link.cut()
    else:
        link.freeze()
    try:
        await asyncio.sleep(fault.duration)
    finally:
        await link.heal()


async def _on_consumer(fault: Fault, rig: Rig) -> str:
    """Freeze, kill or stop one consumer, and thaw or start it after the fault's duration."""
    assert fault.consumer is not None
    consumer = rig.consumers[fault.consumer]
    if fault.kind is Kind.STOP:
        consumer.freeze()
        try:
            await asyncio.sleep(fault.duration)
        finally:
            consumer.thaw()
        return ""
    began = time.monotonic()
    note = ""
    if fault.kind is Kind.KILL:
        await consumer.kill()
    else:
        code = await consumer.terminate()
        note = f"exited {code} after {time.monotonic() - began:.1f} s"
    try:
        await asyncio.sleep(fault.duration)
    finally:
        consumer.start()
    return note
