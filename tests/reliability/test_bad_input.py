"""Bad input: a corpus of every kind of bad message through the consumer, and a fuzzed parser."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.entries import ContextType, NewEntry
from consumer.errors import InvalidEventError
from consumer.events import parse_event
from consumer.incoming import BODY_PREFIX_BYTES, KEPT_BODY_BYTES
from tests.conftest import Env
from tests.corpus import bad_bodies
from tests.harness import Bus, count_dead_letters, dead_letter_rows, event, running, wait_for
from tests.helpers import new_task
from tests.reliability.conftest import Figures

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


async def contents(sql: asyncpg.Connection, task: uuid.UUID) -> list[str]:
    """A task's contents, oldest first."""
    rows = await sql.fetch(
        "SELECT content FROM task_build_history WHERE task_id = $1 ORDER BY created_at, seq", task
    )
    return [row["content"] for row in rows]


class TestCorpus:
    """Every kind of bad message is dead-lettered with the right code and a useful detail."""

    @pytest.mark.parametrize("properties", ["full", "none"])
    async def test_every_kind_among_valid_events(
        self, env: Env, figures: Figures, properties: str
    ) -> None:
        """200 valid events around 61 kinds of bad body, published with or without properties."""
        task = await new_task(env.sql)
        bad = bad_bodies(task)
        async with Bus(env.amqp_url, env.topology) as bus:
            exchange = await bus.channel.get_exchange(env.topology.exchange)
            for n in range(200):
                await bus.publish(event(task, f"valid {n}"))
                if n % 3 == 0 and n // 3 < len(bad):
                    case = bad[n // 3]
                    key = f"history.case{n // 3}"
                    if properties == "full":
                        await bus.publish(case.raw, routing_key=key, message_id=case.code)
                    else:  # no content type, message id, headers or delivery mode
                        await exchange.publish(aio_pika.Message(case.raw), routing_key=key)
            async with running(env.settings):
                await wait_for(
                    lambda: count_dead_letters(env.database_url),
                    lambda n: n >= len(bad),
                    what="every bad message dead-lettered",
                )
                await wait_for(lambda: contents(env.sql, task), lambda c: c[-1:] == ["valid 199"])
            dead = await dead_letter_rows(env.database_url)
        figures.events, figures.faults = 200 + len(bad), len(bad)
        assert await contents(env.sql, task) == [f"valid {n}" for n in range(100, 200)]
        assert len(dead) == len(bad)
        wrong = []
        for case_number, (letter, case) in enumerate(zip(dead, bad, strict=True)):
            detail = letter["detail"]
            if letter["error"] != case.code or case.word.lower() not in detail.lower():
                wrong.append((case_number, case.code, letter["error"], detail))
            assert letter["routing_key"] == f"history.case{case_number}"
            assert letter["failed_at"].tzinfo is not None
            assert len(detail.splitlines()) == 1
            if len(case.raw) > KEPT_BODY_BYTES:  # kept as its start, its length and SHA-256
                assert letter["body"] == case.raw[:BODY_PREFIX_BYTES]
                assert letter["original_body_bytes"] == len(case.raw)
                assert letter["original_body_sha256"] == hashlib.sha256(case.raw).digest()
            else:
                assert letter["body"] == case.raw
            if properties == "full":
                assert letter["message_id"] == case.code
        figures.dead_lettered_wrongly = len(wrong)
        figures.note = f"{len(bad)} kinds, properties: {properties}"
        assert wrong == []


# JSON values of every type, nested a little, for fields and metadata.
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Mostly plausible events with a field or two broken, so the search gets past the JSON parser.
_field_values = {
    "id": st.uuids().map(str) | _json,
    "task_id": st.uuids().map(str) | _json,
    "workspace_id": st.none() | st.uuids().map(str) | _json,
    "session_id": st.none() | st.uuids().map(str) | _json,
    "context_type": st.sampled_from([c.value for c in ContextType]) | _json,
    "content": st.text(max_size=40) | _json,
    "metadata": st.none() | st.dictionaries(st.text(max_size=8), _json, max_size=3) | _json,
    "created_at": st.datetimes(timezones=st.timezones()).map(datetime.isoformat) | _json,
}
_events = st.fixed_dictionaries({}, optional=_field_values)


def _outcome(body: bytes) -> NewEntry | InvalidEventError:
    """What the parser makes of `body`: a row, or the project's validation error."""
    try:
        return parse_event(body, message_id=None, received_at=NOW)
    except InvalidEventError as exc:
        return exc


def _as_bytes(value: Any) -> bytes:  # noqa: ANN401  # any JSON value
    return json.dumps(value, allow_nan=True).encode()


class TestParserProperties:
    """For any bytes, the parser returns a valid event or raises InvalidEventError, quickly."""

    @settings(max_examples=600, deadline=timedelta(seconds=1))
    @given(st.binary(max_size=2048))
    def test_any_bytes(self, body: bytes) -> None:
        """Random bytes never raise anything but InvalidEventError, and never hang."""
        assert isinstance(_outcome(body), NewEntry | InvalidEventError)

    @settings(
        max_examples=600,
        deadline=timedelta(seconds=1),
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(_events)
    def test_event_shaped_json(self, fields: dict[str, Any]) -> None:
        """Event-shaped objects with any field values: a row that keeps every rule, or a reason."""
        outcome = _outcome(_as_bytes(fields))
        if isinstance(outcome, InvalidEventError):
            assert outcome.detail
            assert "\n" not in outcome.detail
            return
        assert 1 <= len(outcome.content) <= 65_536
        assert "\x00" not in outcome.content
        assert outcome.context_type in {c.value for c in ContextType}
        assert outcome.created_at.tzinfo is not None
        assert outcome.created_at - NOW <= timedelta(minutes=5)
        if outcome.metadata is not None:
            assert isinstance(json.loads(outcome.metadata), dict)
            assert len(outcome.metadata.encode()) <= 65_536

    @settings(max_examples=300, deadline=timedelta(seconds=1))
    @given(_events, st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=4))
    def test_damaged_json(self, fields: dict[str, Any], at: int, junk: bytes) -> None:
        """Valid-looking JSON with bytes overwritten somewhere: still only a row or a reason."""
        body = bytearray(_as_bytes(fields))
        body[at : at + len(junk)] = junk
        assert isinstance(_outcome(bytes(body)), NewEntry | InvalidEventError)
