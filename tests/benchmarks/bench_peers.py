"""Benchmark: this project and the consumers a user would pick instead, throughput and latency.

Run from the repository root on a quiet machine (needs PostgreSQL and RabbitMQ; it makes and
removes its own databases, exchanges and queues); 10 to 15 minutes, more the first time, when
it makes the peers' environment (see tests/benchmarks/peers/environment.py):

    .venv/bin/python -m tests.benchmarks.bench_peers [--events 60000] [--seconds 20]
        [--rates 50 200 1000] [--json out.json]

Both sides of the trade-off, for every consumer, in one run:

- Backlog: 60,000 events over 300 tasks, every task already at the cap (so every write also
  trims), content sizes like agents send, published before the consumer starts; events/s
  from the first event handled to the last one written (for this project, from the start of
  its first batch to the end of its last, read from its log).
- Latency: then, on the same database, events published one at a time at a steady 50, 200
  and 1,000 events/s for 20 s each, round-robin over the same tasks; p50, p99 and max from
  just before each publish to the commit that stored it (see bench_latency).

The consumers:

1. Bare loop: aio-pika consume, JSON parse and ack (every 250, multiple=True), storing nothing:
   the most Python does with the broker here. Backlog only. For reference, the same loop on
   aiormq's deliveries, which is how this project reads them.
2. Naive: per message validate, one INSERT, ack; 100 in flight on a pool of 10 connections
   (peers/naive_app.py).
3. FastStream 0.7: a RabbitMQ subscriber writing each message with asyncpg, as its
   documentation shows; it has no batching for RabbitMQ (peers/faststream_app.py).
4. aio-pika-batch: its batch consumer, 500 a batch or 50 ms, each batch one INSERT
   (peers/aio_pika_batch_app.py). It needs Python 3.12: skipped, with a note, without one.
5. This project: `task-history consume` on its defaults.

Also the 500-row INSERT with and without the cap's trim (bench_trim) and the consumer's peak
memory while draining. It prints one table, the targets the project sets itself and whether
each is met, and writes it all as JSON with --json.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import uuid
from dataclasses import dataclass

import aio_pika
import aiormq.abc

from consumer.store import Store
from consumer.topology import Topology
from tests.benchmarks import bench_trim
from tests.benchmarks.bench_drain import backlog, ceiling, project, publish
from tests.benchmarks.bench_latency import (
    RATE_OPTIONS,
    Process,
    Site,
    latencies,
    running,
    start_project,
)
from tests.benchmarks.common import (
    BACKLOG_OPTIONS,
    Stopwatch,
    amqp_server,
    database_at_cap,
    declared_topology,
    exit_unless_at_cap,
    headed,
    run_and_report,
)
from tests.benchmarks.peers.environment import peer_python

# The targets the project sets itself: (result key, comparison, target, as printed).
TARGETS = [
    ("project_over_ceiling", ">=", 0.95, "backlog ≥ 0.95 of the bare loop"),
    ("project_over_naive", ">=", 8.0, "backlog ≥ 8x naive"),
    ("project_p99_ms_at_200", "<=", 15.0, "p99 ≤ 15 ms at 200 events/s"),
    ("trim_ratio", ">=", 0.5, "500-row INSERT with the trim ≥ 0.5 of without"),
    ("project_peak_rss_mb", "<=", 150.0, "peak RSS while draining ≤ 150 MB"),
]
PEER_PREFETCH = 100  # the per-message peers: 100 in flight, on 10 connections
BATCH_PREFETCH = 1000  # aio-pika-batch: two batches, as its tuning tips advise
DRAIN_SECONDS = 600  # the slowest peer's backlog, with room to spare


@dataclass(frozen=True)
class Peer:
    """A consumer to measure: how it is shown and how to start it (no python: skipped)."""

    key: str
    label: str
    python: str | None
    module: str
    options: tuple[str, ...] = ()

    def command(self, database_url: str, url: str, topology: Topology) -> list[str]:
        """Its command line for this run's database and queue."""
        assert self.python is not None
        arguments = json.dumps(topology.queue_arguments())
        return [
            self.python,
            "-m",
            self.module,
            *("--database-url", database_url, "--amqp-url", url, "--queue", topology.queue),
            *("--queue-arguments", arguments, *self.options),
        ]


def peers(note: list[str]) -> list[Peer]:
    """The peers, in the table's order; those that can't run here are marked skipped."""
    environment = peer_python(note)
    python = None if environment is None else str(environment.python)
    can = set() if environment is None else environment.peers
    return [
        Peer(
            "naive",
            "naive: validate, INSERT, ack per message",
            sys.executable,
            "tests.benchmarks.peers.naive_app",
            ("--prefetch", str(PEER_PREFETCH)),
        ),
        Peer(
            "faststream",
            "FastStream 0.7, one INSERT per message",
            python if "faststream" in can else None,
            "tests.benchmarks.peers.faststream_app",
            ("--prefetch", str(PEER_PREFETCH)),
        ),
        Peer(
            "aio_pika_batch",
            "aio-pika-batch, one INSERT per batch",
            python if "aio-pika-batch" in can else None,
            "tests.benchmarks.peers.aio_pika_batch_app",
            ("--prefetch", str(BATCH_PREFETCH), "--batch-size", "500", "--batch-wait-ms", "50"),
        ),
    ]


async def bare_aiormq(url: str, topology: Topology, total: int) -> float:
    """Seconds the bare loop takes on aiormq's deliveries, without aio-pika's messages.

    This project reads deliveries this way (consumer.broker.Received).
    """
    connection = await aio_pika.connect(url)
    channel = await (await connection.channel()).get_underlay_channel()
    await channel.basic_qos(prefetch_count=1000)
    clock = Stopwatch(total)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        clock.arrived()
        json.loads(message.body)
        if (seen := clock.counted()) % 250 == 0 or seen == total:
            tag = getattr(message.delivery, "delivery_tag", 0)  # a Basic.Deliver's
            await channel.basic_ack(tag, multiple=True)
        clock.finish()

    await channel.basic_consume(topology.queue, on_message, no_ack=False)
    elapsed = await clock.seconds()
    await connection.close()
    return elapsed


async def drain_peer(command: list[str], total: int) -> float:
    """Seconds a peer takes to write a backlog of `total` events, by its own clock."""
    async with running([*command, "--events", str(total)]) as process:
        line = await process.until("drained", timeout=DRAIN_SECONDS)
    return float(str(line["seconds"]))


@dataclass(frozen=True)
class Plan:
    """What every consumer is given: the broker and names, the tasks, the backlog, the rates."""

    url: str
    topology: Topology
    tasks: list[uuid.UUID]
    bodies: list[bytes]
    rates: list[int]
    seconds: float

    def site(self, database_url: str) -> Site:
        """Where a consumer writing to `database_url` is measured."""
        return Site(database_url, self.url, self.topology, self.tasks)


@dataclass
class Figures:
    """One consumer's results."""

    label: str
    events_per_s: int | None = None
    latency: dict[str, dict[str, float]] | None = None
    peak_rss_mb: float | None = None


async def measure_peer(peer: Peer, plan: Plan) -> Figures:
    """A peer's backlog drain, then its latency at each rate, on a database of its own."""
    if peer.python is None:
        return Figures(peer.label)
    print(f"measuring {peer.label}", flush=True)
    async with database_at_cap(f"th_bench_{peer.key}", plan.tasks) as database_url:
        command = peer.command(database_url, plan.url, plan.topology)
        await publish(plan.url, plan.topology, plan.bodies)
        drained = await drain_peer(command, len(plan.bodies))

        def start() -> contextlib.AbstractAsyncContextManager[Process]:
            return running(command)

        latency = await latencies(
            plan.site(database_url), rates=plan.rates, seconds=plan.seconds, start=start
        )
    return Figures(peer.label, round(len(plan.bodies) / drained), latency)


async def measure_project(plan: Plan) -> Figures:
    """`task-history consume`: the backlog, its peak memory, then its latency at each rate."""
    print("measuring task-history consume", flush=True)
    async with database_at_cap("th_bench_project", plan.tasks) as database_url:
        await publish(plan.url, plan.topology, plan.bodies)
        drained, peak = await project(database_url, plan.url, plan.topology, len(plan.bodies))
        async with Store(database_url, max_connections=1) as store:
            await exit_unless_at_cap(store, len(plan.tasks))
        site = plan.site(database_url)
        latency = await latencies(
            site, rates=plan.rates, seconds=plan.seconds, start=start_project(site)
        )
    label = "this project: `task-history consume`"
    return Figures(label, round(len(plan.bodies) / drained), latency, round(peak, 1))


async def run(
    events: int, tasks: int, seconds: float, rates: list[int], trim_batches: int
) -> dict[str, object]:
    """Every measurement, one after the other, on fresh databases and names."""
    notes: list[str] = []
    others = peers(notes)
    rng = random.Random(60)
    url = amqp_server()
    task_ids = [uuid.uuid4() for _ in range(tasks)]
    bodies = backlog(rng, task_ids, events)
    async with declared_topology(url) as topology:
        plan = Plan(url, topology, task_ids, bodies, rates, seconds)
        await publish(url, topology, bodies)
        bare = round(events / await ceiling(url, topology, events))
        figures = {"bare_loop": Figures("bare aio-pika loop, nothing stored", bare)}
        await publish(url, topology, bodies)
        raw = round(events / await bare_aiormq(url, topology, events))
        for peer in others:
            figures[peer.key] = await measure_peer(peer, plan)
        figures["project"] = await measure_project(plan)
    trim = await bench_trim.run(trim_batches)
    return result_of(figures, plan, bare_aiormq=raw, trim=trim, notes=notes)


def result_of(
    figures: dict[str, Figures],
    plan: Plan,
    *,
    bare_aiormq: int,
    trim: dict[str, object],
    notes: list[str],
) -> dict[str, object]:
    """The result as the JSON file holds it, with the targets' verdicts."""
    bare = figures["bare_loop"].events_per_s or 1
    ours = figures["project"]
    naive = figures["naive"].events_per_s or 1
    assert ours.events_per_s is not None
    assert ours.latency is not None
    consumers = {
        key: {
            "label": f.label,
            "events_per_s": f.events_per_s,
            "of_bare_loop": None if f.events_per_s is None else round(f.events_per_s / bare, 3),
            "latency": f.latency,
        }
        for key, f in figures.items()
    }
    result = headed(
        "peers",
        events=len(plan.bodies),
        tasks=len(plan.tasks),
        seconds_per_rate=plan.seconds,
        rates=plan.rates,
        consumers=consumers,
        bare_aiormq_events_per_s=bare_aiormq,
        project_over_ceiling=round(ours.events_per_s / bare, 3),
        project_over_naive=round(ours.events_per_s / naive, 2),
        project_over_bare_aiormq=round(ours.events_per_s / bare_aiormq, 3),
        project_p99_ms_at_200=ours.latency.get("200", {}).get("p99_ms", float("nan")),
        trim_rows_per_s_with=trim["rows_per_s_with_trim"],
        trim_rows_per_s_without=trim["rows_per_s_without_trim"],
        trim_ratio=trim["ratio"],
        project_peak_rss_mb=ours.peak_rss_mb,
        notes=notes,
    )
    result["targets_met"] = verdicts(result)
    return result


def verdicts(result: dict[str, object]) -> dict[str, bool]:
    """Whether each target is met."""
    met = {}
    for key, comparison, target, _ in TARGETS:
        value = float(str(result[key]))
        met[key] = value >= target if comparison == ">=" else value <= target
    return met


def cell(latency: dict[str, dict[str, float]] | None, rate: str) -> str:
    """p50 / p99 / max at `rate`, or a dash."""
    if latency is None or rate not in latency:
        return "-"
    f = latency[rate]
    return f"{f['p50_ms']} / {f['p99_ms']} / {f['max_ms']}"


def table(result: dict[str, object]) -> list[str]:
    """The figures as printed: one Markdown table, then the targets and notes."""
    r = result
    consumers = r["consumers"]
    met = r["targets_met"]
    rates = r["rates"]
    notes = r["notes"]
    assert isinstance(consumers, dict)
    assert isinstance(met, dict)
    assert isinstance(rates, list)
    assert isinstance(notes, list)
    header = ["consumer", "backlog events/s", "of the bare loop"]
    header += [f"ms at {rate}/s: p50 / p99 / max" for rate in rates]
    lines = [
        (
            f"{r['events']} events over {r['tasks']} tasks, all at the cap; latency"
            f" {r['seconds_per_rate']} s a rate; {r['machine']}"
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|---|---:|---:|" + "---:|" * len(rates),
    ]
    for c in consumers.values():
        rate = "skipped" if c["events_per_s"] is None else f"{c['events_per_s']:,}"
        share = "" if c["of_bare_loop"] is None else str(c["of_bare_loop"])
        row = [c["label"], rate, share, *(cell(c["latency"], str(rate)) for rate in rates)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        (
            f"The bare loop on aiormq's deliveries: {r['bare_aiormq_events_per_s']:,} events/s;"
            f" this project is {r['project_over_bare_aiormq']} of it."
        ),
        (
            f"500-row INSERTs, every task at the cap: {r['trim_rows_per_s_with']} rows/s with"
            f" the trim, {r['trim_rows_per_s_without']} without ({r['trim_ratio']})."
        ),
        "",
        "Targets:",
    ]
    for key, _, _, text in TARGETS:
        lines.append(f"- {text}: {r[key]}, {'met' if met[key] else 'MISSED'}")
    lines += [f"Note: {line}" for line in notes]
    return lines


def main() -> None:
    """Parse arguments, run, print the table, and write JSON when asked."""
    options = {**BACKLOG_OPTIONS, **RATE_OPTIONS, "--trim-batches": {"type": int, "default": 60}}
    run_and_report(__doc__, options, run, table)


if __name__ == "__main__":
    main()
