"""Preparing events to publish and reading JSON Lines: pure logic, no broker."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from consumer.entries import ContextType
from consumer.errors import ErrorCode, InvalidEventError
from consumer.events import Event
from consumer.publisher import HistoryPublisher, OutgoingEvent, prepare_event, read_event_lines

NOW = datetime(2026, 11, 26, 10, 15, tzinfo=UTC)
TASK = uuid.UUID(int=7)


def minimal(**fields: object) -> dict[str, object]:
    """The three required fields, plus `fields`."""
    return {"task_id": str(TASK), "context_type": "agent_turn", "content": "hi", **fields}


class TestPrepareEvent:
    """prepare_event validates like the consumer and fills what a publisher should."""

    def test_fills_id_and_created_at(self) -> None:
        """A new id (a UUIDv7) goes into the body too; created_at is the publisher's now."""
        outgoing = prepare_event(minimal(), now=NOW)
        body = json.loads(outgoing.body)
        assert body["id"] == str(outgoing.id)
        assert outgoing.id.version == 7
        assert datetime.fromisoformat(body["created_at"]) == NOW
        assert outgoing.routing_key == "history.agent_turn"

    def test_keeps_given_values_and_normalises_the_id(self) -> None:
        """A given id (any spelling, or a UUID object) and created_at are kept."""
        given = uuid.uuid4()
        outgoing = prepare_event(
            minimal(id=str(given).upper(), created_at="2026-11-26T09:00:00Z"), now=NOW
        )
        assert outgoing.id == given
        body = json.loads(outgoing.body)
        assert body["id"] == str(given)
        assert body["created_at"] == "2026-11-26T09:00:00Z"
        assert prepare_event(minimal(id=given, task_id=TASK), now=NOW).id == given

    def test_accepts_an_event_model(self) -> None:
        """An Event instance is sent as its JSON, with the string metadata turned into an object."""
        model = Event.model_validate(minimal(metadata='{"a": 1}', context_type="error"))
        body = json.loads(prepare_event(model, now=NOW).body)
        assert body["metadata"] == {"a": 1}
        assert body["context_type"] == ContextType.ERROR.value

    @pytest.mark.parametrize(
        ("fields", "match"),
        [
            ({"context_type": "gossip"}, "context_type"),
            ({"content": ""}, "content"),
            ({"task_id": "nope"}, "task_id"),
            ({"created_at": (NOW + timedelta(hours=1)).isoformat()}, "in the future"),
            ({"created_at": datetime(2026, 1, 1)}, "RFC 3339"),  # noqa: DTZ001  # naive on purpose
            ({"metadata": {"x": float("nan")}}, "NaN"),
            ({"metadata": {"x": object()}}, "not JSON"),
            ({"metadata": "[1]"}, "JSON object"),
        ],
    )
    def test_refuses_what_the_consumer_would(self, fields: dict[str, object], match: str) -> None:
        """Every rule of the event is checked before anything is sent."""
        with pytest.raises(InvalidEventError, match=match) as raised:
            prepare_event(minimal(**fields), now=NOW)
        assert raised.value.code is ErrorCode.INVALID_EVENT

    def test_refuses_a_body_over_one_mebibyte(self) -> None:
        """A body the consumer would refuse unparsed is refused here too."""
        with pytest.raises(InvalidEventError) as raised:
            prepare_event(minimal(padding="x" * (1 << 20)), now=NOW)
        assert raised.value.code is ErrorCode.TOO_LARGE

    def test_window_must_be_positive(self) -> None:
        """A publisher can't be built with a window under 1."""
        with pytest.raises(ValueError, match="window"):
            HistoryPublisher("amqp://localhost/", window=0)


class TestReadEventLines:
    """JSON Lines: an event or a reason per line, numbered from 1, blank lines skipped."""

    def test_lines_numbered_and_judged(self) -> None:
        """Good lines become events, bad ones reasons, each with its line number."""
        lines: list[str | bytes] = [
            json.dumps(minimal()).encode(),
            b"{oops",
            b"   \n",
            b'"a string"',
            json.dumps(minimal(content="")).encode(),
            b"\xff\xfe",
            json.dumps(minimal(content="last")),
        ]
        results = list(read_event_lines(lines, clock=lambda: NOW))
        assert [number for number, _ in results] == [1, 2, 4, 5, 6, 7]
        kinds = [
            item.code.value if isinstance(item, InvalidEventError) else "ok" for _, item in results
        ]
        assert kinds == [
            "ok",
            "invalid_json",
            "invalid_event",
            "invalid_event",
            "invalid_json",
            "ok",
        ]
        last = results[-1][1]
        assert isinstance(last, OutgoingEvent)
        assert json.loads(last.body)["content"] == "last"

    def test_each_line_gets_its_own_id(self) -> None:
        """Lines without ids are events with ids of their own, in the order of the lines."""
        line = json.dumps(minimal())
        ids = [
            item.id
            for _, item in read_event_lines([line] * 100, clock=lambda: NOW)
            if isinstance(item, OutgoingEvent)
        ]
        assert len(set(ids)) == 100
        # Time-ordered (UUIDv7): ids made one after another sit side by side in the id index.
        assert ids == sorted(ids)
