"""A hostile publisher, fuzzed: whatever a message carries, it ends as one row or one dead letter.

Hypothesis draws messages over everything AMQP 0-9-1 can carry: properties of any value (text
that is not UTF-8, timestamps up to 2**64-1, any octet), header tables of every field type,
nested up to 1,200 deep, with names that are not UTF-8, integer and time extremes, the
consumer's own headers forged with plausible and absurd values and a made-up signature, routing
keys that are not UTF-8, and bodies from valid events to random bytes and 2 MiB of junk. They
are sent frame by frame (tests/hostile.py) through the real broker, to the history exchange, to
the events queue as the retry queue sends (default exchange), and straight to the dead-letter
queue, to a consumer running as a process of its own. Every message must end as exactly one
row or exactly one dead letter with a reason; a message with nothing hostile and a valid body
must be a row, stored as if the forged headers were not there; the consumer never drops its
connection and never exits. The counts go to the run's report.

The same messages every run (derandomized); TASK_HISTORY_TEST_FUZZ_SEED draws others, and
TASK_HISTORY_TEST_FUZZ_MESSAGES sets how many (1,500).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import struct
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from consumer.deadletters import ERROR_CODES
from tests.cluster import free_port
from tests.conftest import Env
from tests.harness import Bus, ConsumerProcess, count_dead_letters, count_rows, wait_for
from tests.helpers import new_task
from tests.hostile import (
    Field,
    RawMessage,
    RawPublisher,
    array,
    integer,
    nested_table,
    shortstr,
    table,
    table_bytes,
    text,
    timestamp_field,
)
from tests.reliability.conftest import Figures

MESSAGES = int(os.environ.get("TASK_HISTORY_TEST_FUZZ_MESSAGES", "1500"))
SEED = os.environ.get("TASK_HISTORY_TEST_FUZZ_SEED")
TOKEN = re.compile(rb"tok([0-9a-f]{32})")
LAST_SECOND = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()

OWN = [
    "x-received-at",
    "x-unknown-task-since",
    "x-database-refused-since",
    "x-replay-count",
    "x-retry-count",
    "x-failed-at",
    "x-error",
    "x-error-detail",
    "x-original-routing-key",
    "x-no-message-id",
    "x-task-history-signature",
]
TIMES = [
    "2099-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59+00:00",
    "0001-01-01T00:00:00+23:59",
    "1970-01-01T00:00:00+00:00",
    "2026-12-01T00:00:00",
    "yesterday",
    "",
]


@dataclass
class Drawn:
    """One message to send, what is hostile about it, and its token."""

    message: RawMessage
    token: str
    # Sent to the history exchange, to the events queue directly, or to the dead-letter queue.
    route: str = "exchange"
    valid_body: bool = False
    # What in its frames a client may not read, or what the broker may refuse.
    hostile: list[str] = field(default_factory=list)


def unreadable_time(seconds: int) -> bool:
    """Whether pamqp fails on a timestamp: past 2**32 it reads milliseconds, to the year 9999."""
    return seconds > 0xFFFFFFFF and seconds / 1000 > LAST_SECOND


def _bad_text(draw: st.DrawFn) -> bytes:
    return draw(st.binary(min_size=1, max_size=20).map(lambda raw: raw + b"\xff"))


_INTEGERS = st.sampled_from([0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)]) | (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
)
_SECONDS = st.integers(0, 2**40) | st.sampled_from([0, 2**32, 2**48, 2**63, 2**64 - 1])


@st.composite
def _header_value(draw: st.DrawFn, hostile: list[str]) -> Field:
    """One field of a table: any of the types the broker takes, extremes included."""
    kind = draw(
        st.sampled_from(
            ["text", "text", "int", "int", "time", "table", "array", "deep", "bad_text"]
        )
    )
    value: Field
    if kind == "text":
        value = text(draw(st.text(max_size=30)))
    elif kind == "bad_text":
        value = text(_bad_text(draw))  # long strings of any bytes are read as bytes, not refused
    elif kind == "int":
        value = integer(draw(_INTEGERS))
    elif kind == "time":
        seconds = draw(_SECONDS)
        if unreadable_time(seconds):
            hostile.append("a time field no client reads")
        value = timestamp_field(seconds)
    elif kind == "deep":
        depth = draw(st.sampled_from([2, 31, 33, 40, 200, 1200]))
        if depth >= 200:  # a client's recursion limit is somewhere past it
            hostile.append("headers nested past a client's recursion limit")
        value = Field(b"F", nested_table(depth))
    else:
        items = draw(st.lists(st.integers(0, 2**31), max_size=3))
        value = (
            array([integer(item) for item in items])
            if kind == "array"
            else table([(f"k{n}", integer(item)) for n, item in enumerate(items)])
        )
    return value


@st.composite
def _headers(draw: st.DrawFn, hostile: list[str]) -> bytes:
    """A headers table: ordinary names, names that are not UTF-8, and the consumer's own."""
    entries: list[tuple[bytes | str, Field]] = []
    for _ in range(draw(st.integers(0, 6))):
        name_kind = draw(st.sampled_from(["plain"] * 4 + ["own"] * 3 + ["bytes"]))
        if name_kind == "own":
            name: bytes | str = draw(st.sampled_from(OWN))
            value = draw(
                st.sampled_from(TIMES).map(text)
                | st.sampled_from([2**31, -1, 2**63 - 1, 0]).map(integer)
                | st.just(text("c2lnbmVkIGJ5IG5vYm9keQ=="))
                | st.binary(max_size=8).map(text)  # any bytes, a signature's included
                | st.just(Field(b"t", b"\x01"))
            )
        elif name_kind == "bytes":
            name = _bad_text(draw)
            hostile.append("a header name that is not UTF-8")
            value = draw(_header_value(hostile))
        else:
            name = draw(st.text(min_size=1, max_size=12))
            value = draw(_header_value(hostile))
        entries.append((name, value))
    return table_bytes(entries)


@st.composite
def _properties(draw: st.DrawFn, hostile: list[str]) -> dict[str, bytes]:
    """Properties of any value the broker passes through."""
    properties: dict[str, bytes] = {}
    for name in ("content_type", "message_id", "correlation_id", "type", "app_id"):
        kind = draw(st.sampled_from(["absent"] * 24 + ["text"] * 15 + ["bad"]))
        if kind == "text":
            properties[name] = shortstr(draw(st.text(max_size=40)).encode()[:255])
        elif kind == "bad":
            properties[name] = shortstr(_bad_text(draw))
            hostile.append(f"{name} that is not UTF-8")
    if draw(st.booleans()):
        properties["priority"] = struct.pack(">B", draw(st.integers(0, 255)))
    # The broker refuses a delivery mode other than 1 or 2 (the publisher sees it refused).
    mode = draw(st.sampled_from([None, None, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 3]))
    if mode is not None:
        properties["delivery_mode"] = struct.pack(">B", mode)
    if draw(st.sampled_from([True, False, False])):
        seconds = draw(st.integers(0, 2**34) | st.sampled_from([0, 2**31, 2**48, 2**64 - 1]))
        if unreadable_time(seconds):
            hostile.append("a timestamp no client reads")
        properties["timestamp"] = struct.pack(">Q", seconds)
    if draw(st.booleans()):
        properties["headers"] = draw(_headers(hostile))
    return properties


@st.composite
def _body(draw: st.DrawFn, tasks: list[uuid.UUID], token: str) -> tuple[bytes, bool]:
    """(a body carrying `token`, whether it is a valid event of one of `tasks`)."""
    task = str(draw(st.sampled_from(tasks)))
    kind = draw(
        st.sampled_from(["valid"] * 6 + ["broken_field", "not_json", "bytes", "huge", "other_task"])
    )
    marker = f"tok{token}"
    event: dict[str, Any] = {"task_id": task, "context_type": "agent_turn", "content": marker}
    if kind == "valid":
        extra = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=2))
        event = {**extra, **event, "id": str(uuid.uuid4()), "content": f"fuzz {marker}"}
    elif kind == "broken_field":
        event["context_type"] = draw(st.sampled_from([None, 5, "", [], "x" * 70_000, "\x00"]))
    elif kind == "other_task":  # an unknown task: dead-lettered at once in the tests' settings
        event["task_id"] = str(uuid.uuid4())
    else:
        junk = {
            "huge": b"\xfe" * draw(st.sampled_from([1 << 16, (1 << 20) + 1, 2 << 20])),
            "not_json": b" {not json",
            "bytes": draw(st.binary(max_size=200)),
        }[kind]
        return marker.encode() + junk, False
    return json.dumps(event).encode(), kind == "valid"


@st.composite
def hostile_messages(draw: st.DrawFn, tasks: list[uuid.UUID], queues: tuple[str, str]) -> Drawn:
    """One message as a hostile publisher might send it, and what is hostile about it."""
    token = uuid.uuid4().hex
    hostile: list[str] = []
    body, valid = draw(_body(tasks, token))
    properties = draw(_properties(hostile))
    route = draw(st.sampled_from(["exchange"] * 8 + ["events_queue", "dead_queue"]))
    routing_key: bytes | str = "history.agent_turn"
    if route == "exchange" and draw(st.integers(0, 9)) == 0:
        routing_key = b"history." + _bad_text(draw)
        hostile.append("a routing key that is not UTF-8")
    elif route != "exchange":
        routing_key = queues[0] if route == "events_queue" else queues[1]
    return Drawn(
        RawMessage(body, routing_key=routing_key, properties=properties),
        token,
        route=route,
        valid_body=valid,
        hostile=hostile,
    )


def draw_messages(tasks: list[uuid.UUID], queues: tuple[str, str], count: int) -> list[Drawn]:
    """`count` messages: the same every run, unless TASK_HISTORY_TEST_FUZZ_SEED says otherwise."""
    made: list[Drawn] = []

    @settings(
        max_examples=count,
        derandomize=SEED is None,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_messages(tasks, queues))
    def collect(drawn: Drawn) -> None:
        made.append(drawn)

    if SEED is not None:
        collect = seed(int(SEED))(collect)
    collect()
    return made


@dataclass
class Outcome:
    """Where each token ended: rows and dead letters."""

    rows: dict[str, list[datetime]] = field(default_factory=dict)
    letters: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


async def outcomes(sql: asyncpg.Connection) -> Outcome:
    """Every token found in the rows and in the dead letters."""
    found = Outcome()
    for row in await sql.fetch("SELECT content, created_at FROM task_build_history"):
        for token in TOKEN.findall(row["content"].encode()):
            found.rows.setdefault(token.decode(), []).append(row["created_at"])
    for row in await sql.fetch("SELECT error, detail, body FROM task_build_history_dead_letters"):
        for token in set(TOKEN.findall(row["body"])):
            found.letters.setdefault(token.decode(), []).append((row["error"], row["detail"]))
    return found


async def scrape(port: int) -> dict[str, float]:
    """The consumer's metrics, `name{labels}` -> value."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text_ = await response.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text_.splitlines()
        if line.startswith("task_history_")
    }


class TestHostilePublisher:
    """Fuzzed messages through the real broker: one outcome each, a consumer that stays up."""

    async def test_every_message_ends_as_one_row_or_one_dead_letter(
        self, env: Env, figures: Figures, record_property: Callable[[str, object], None]
    ) -> None:
        """Hundreds of hostile messages: each one row or one letter with a reason; no crash."""
        # Enough tasks that none reaches the cap of 100 entries (which would trim some).
        tasks = [await new_task(env.sql) for _ in range(MESSAGES // 40 + 1)]
        queues = (env.topology.queue, env.topology.dead_letter_queue)
        drawn = draw_messages(tasks, queues, MESSAGES)
        port = free_port()
        consumer = ConsumerProcess(
            env.settings.model_copy(update={"metrics_host": "127.0.0.1", "metrics_port": port}),
            env.tmp_path / "consumer.log",
        )
        started = datetime.now(UTC)
        consumer.start()
        try:
            refused_by_broker = await publish_all(env, drawn)
            sent = [item for item in drawn if item not in refused_by_broker]
            with contextlib.suppress(AssertionError):  # the oracle below says what is missing
                await wait_for(lambda: _settled(env, len(sent)), bool, timeout=90)
            metrics = await scrape(port)
            assert consumer.process is not None
            assert consumer.process.poll() is None, consumer.log()
        finally:
            consumer.signal(signal.SIGTERM)
            code = await consumer.exit_code()
        assert code == 0, consumer.log()
        found = await outcomes(env.sql)
        report = check(sent, found, started=started)
        log = consumer.log()
        drops = log.count("broker connection lost")
        ignored = {
            kind: int(metrics.get(f'task_history_ignored_values_total{{kind="{kind}"}}', 0))
            for kind in ("unsigned", "out_of_range", "too_deep")
        }
        figures.events = len(sent)
        figures.faults = sum(1 for item in sent if item.hostile or item.route != "exchange")
        figures.lost = len(report.lost)
        figures.duplicated = len(report.twice)
        figures.dead_lettered_wrongly = len(report.wrongly)
        codes = ", ".join(f"{code} {n}" for code, n in sorted(report.codes.items()))
        figures.note = (
            f"rows {report.rows}, dead letters {sum(report.codes.values())} ({codes});"
            f" ignored values {ignored}; refused by the broker {len(refused_by_broker)};"
            f" connection drops {drops}"
        )
        record_property("summary", f"{len(sent)} hostile messages: {figures.note}")
        assert (report.lost, report.twice, report.wrongly, report.without_reason) == (
            [],
            [],
            [],
            [],
        )
        assert report.forged_times == []
        assert drops == 0, log
        assert report.codes.get("internal_error", 0) == 0, log
        assert await count_dead_letters(env.database_url) == sum(report.codes.values())
        async with Bus(env.amqp_url, env.topology) as bus:
            for queue in (env.topology.queue, env.topology.retry_queue, *queues[1:]):
                assert await bus.depth(queue) == 0, queue


async def publish_all(env: Env, drawn: list[Drawn]) -> list[Drawn]:
    """Publish each message, confirmed, one after the other; those the broker refused."""
    refused: list[Drawn] = []
    publisher = RawPublisher(env.amqp_url)
    await publisher.__aenter__()
    try:
        for item in drawn:
            if item.route == "exchange":
                item.message.exchange = env.topology.exchange
            try:
                await publisher.publish(item.message)
            except (ConnectionError, OSError):  # the broker closed on it: not sent
                refused.append(item)
                await publisher.__aexit__()
                publisher = RawPublisher(env.amqp_url)
                await publisher.__aenter__()
    finally:
        await publisher.__aexit__()
    return refused


async def _settled(env: Env, sent: int) -> bool:
    """Whether there are as many rows and dead letters as messages sent."""
    rows = await count_rows(env.database_url)
    return rows + await count_dead_letters(env.database_url) >= sent


@dataclass
class Report:
    """What the oracle found."""

    rows: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    wrongly: list[str] = field(default_factory=list)
    without_reason: list[str] = field(default_factory=list)
    forged_times: list[str] = field(default_factory=list)


def check(sent: list[Drawn], found: Outcome, *, started: datetime) -> Report:
    """Each message: exactly one outcome; clean valid events stored, at the time they came."""
    report = Report()
    now = datetime.now(UTC) + timedelta(seconds=1)
    for item in sent:
        rows = found.rows.get(item.token, [])
        letters = found.letters.get(item.token, [])
        if len(rows) + len(letters) == 0:
            report.lost.append(f"{item.token} {item.hostile} {item.route}")
            continue
        if len(rows) + len(letters) > 1:
            report.twice.append(f"{item.token} rows {len(rows)} letters {letters}")
            continue
        if rows:
            report.rows += 1
            if not started - timedelta(seconds=1) <= rows[0] <= now:
                report.forged_times.append(f"{item.token} stored at {rows[0]}")
        else:
            code, detail = letters[0]
            report.codes[code] += 1
            if code not in ERROR_CODES or not detail:
                report.without_reason.append(f"{item.token} {code!r} {detail!r}")
        clean = item.valid_body and not item.hostile and item.route != "dead_queue"
        if clean and not rows:
            report.wrongly.append(f"{item.token} {letters} {item.message.properties}")
    return report
