"""Reading, selecting and counting dead letters, and the replayed copy's headers: no broker."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage

from consumer.broker.headers import BROKER_HEADERS, dead_letter_headers
from consumer.deadletters import (
    Census,
    DeadLetter,
    Selection,
    Verdict,
    jsonable,
    judge,
    read_dead_letter,
    replay_count,
    replay_headers,
    shown,
)
from consumer.errors import ErrorCode
from consumer.moments import parse_moment
from consumer.topology import Topology
from tests.fakes import FakeMessage

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TASK = uuid.UUID("6f1c2a1e-7d4b-4c8e-9a0f-1b2c3d4e5f60")


# What a dead letter carries unless a test says otherwise.
DEAD_LETTER: dict[str, Any] = {
    "body": b"{}",
    "message_id": "m1",
    "exchange": "task_build_history.dlx",
    "delivery_mode": 2,
}


def letter_of(**fields: Any) -> DeadLetter:  # noqa: ANN401  # any field of FakeMessage
    """Read a fake message with `fields` set."""
    return read_dead_letter(cast("AbstractIncomingMessage", FakeMessage(**DEAD_LETTER | fields)))


def consumer_headers(code: ErrorCode = ErrorCode.UNKNOWN_TASK) -> dict[str, Any]:
    """The headers the consumer writes on a dead letter."""
    return dead_letter_headers(
        {}, code=code, detail="why", routing_key="history.error", failed_at=NOW
    )


def body_of(task: uuid.UUID | str = TASK) -> bytes:
    """A JSON body naming `task`."""
    return json.dumps({"task_id": str(task), "content": "x"}).encode()


class TestReading:
    """A dead letter says what failed and why, from whichever headers it has."""

    def test_the_consumers_headers(self) -> None:
        """x-error, x-error-detail, x-failed-at and the original routing key are read."""
        letter = letter_of(body=body_of(), headers=consumer_headers(), routing_key="history.error")
        assert (letter.code, letter.detail, letter.failed_at) == ("unknown_task", "why", NOW)
        assert (letter.task_id, letter.routing_key, letter.replay_count) == (
            str(TASK),
            "history.error",
            0,
        )

    def test_header_values_as_bytes(self) -> None:
        """AMQP strings that arrive as bytes read the same."""
        headers = {"x-error": b"invalid_json", "x-error-detail": b"not JSON"}
        letter = letter_of(headers=headers)
        assert (letter.code, letter.detail) == ("invalid_json", "not JSON")

    def test_a_poison_message_from_x_death(self) -> None:
        """Dead-lettered by the broker past the delivery limit: delivery_limit, from x-death."""
        death = {
            "reason": "delivery_limit",
            "queue": "task_build_history.events",
            "time": NOW,
            "count": 1,
            "routing-keys": ["history.agent_turn"],
        }
        letter = letter_of(headers={"x-death": [death]}, routing_key="history.agent_turn")
        assert letter.code == "delivery_limit"
        assert "delivered too many times" in letter.detail
        assert "task_build_history.events" in letter.detail
        assert letter.failed_at == NOW

    @pytest.mark.parametrize(
        ("reason", "code"),
        [("rejected", "rejected"), ("expired", "ttl_expired"), ("maxlen", "queue_full")],
    )
    def test_other_broker_reasons(self, reason: str, code: str) -> None:
        """Each broker reason has a code of its own; TTL expiry is not the event's `expired`."""
        letter = letter_of(headers={"x-death": [{"reason": reason, "queue": "q"}]})
        assert letter.code == code
        assert f"reason: {reason}" in letter.detail

    def test_routing_key_from_x_death(self) -> None:
        """Without x-original-routing-key or a routing key, x-death's routing keys say it."""
        death = {"reason": "delivery_limit", "queue": "q", "routing-keys": [b"history.error"]}
        letter = letter_of(headers={"x-death": [death]}, routing_key=None)
        assert letter.routing_key == "history.error"

    def test_neither_header(self) -> None:
        """A message nobody explained is `unknown`, with a detail saying so."""
        letter = letter_of(headers={})
        assert letter.code == "unknown"
        assert "no x-error or x-death" in letter.detail
        assert letter.failed_at is None

    @pytest.mark.parametrize(
        "body", [b"not json", b"[1, 2]", b'{"task_id": 7}', b"\xff\xfe", b"[" * 100_000]
    )
    def test_no_task_in_a_bad_body(self, body: bytes) -> None:
        """A body that isn't an object with a string task_id has no task."""
        assert letter_of(body=body).task_id is None

    def test_no_task_in_an_oversized_body(self) -> None:
        """A body over 1 MiB is not parsed."""
        big = json.dumps({"task_id": str(TASK), "content": "x" * (1 << 20)}).encode()
        assert letter_of(body=big).task_id is None

    @pytest.mark.parametrize(("value", "count"), [(2, 2), ("3", 3), ("x", 0), (-1, 0), (None, 0)])
    def test_replay_count(self, value: object, count: int) -> None:
        """The replay count is a non-negative integer; anything malformed reads as 0."""
        assert replay_count({"x-replay-count": value}) == count

    def test_properties_that_are_set(self) -> None:
        """Properties left unset don't appear."""
        letter = letter_of(app_id="agent-7")
        assert letter.properties["app_id"] == "agent-7"
        assert letter.properties["delivery_mode"] == 2
        assert "reply_to" not in letter.properties


class TestReplayHeaders:
    """A replayed copy clears the failure and counts the replay."""

    def test_clears_the_failure_and_counts(self) -> None:
        """x-error, its detail and time go; x-replay-count goes up by one."""
        headers = replay_headers({**consumer_headers(), "x-replay-count": 2, "app": "kept"})
        assert headers == {
            "x-original-routing-key": "history.error",
            "x-replay-count": 3,
            "app": "kept",
        }

    def test_a_fresh_unknown_task_window(self) -> None:
        """The retry window's start and count go, so the task gets its whole window again."""
        headers = replay_headers(
            {"x-unknown-task-since": NOW.isoformat(), "x-retry-count": 9, "x-received-at": "t"}
        )
        assert headers == {"x-received-at": "t", "x-replay-count": 1}

    def test_no_broker_headers(self) -> None:
        """The broker's own headers are never copied."""
        headers = replay_headers(dict.fromkeys(BROKER_HEADERS, "x"))
        assert headers == {"x-replay-count": 1}


class TestSelection:
    """Filters: error codes, task, failure time; all must hold."""

    def test_everything(self) -> None:
        """No filter selects every letter, even one without a time."""
        assert Selection().is_everything
        assert Selection().matches(letter_of(headers={}))

    def test_error_codes(self) -> None:
        """Any of the given codes."""
        selection = Selection(errors=frozenset({"unknown_task", "expired"}))
        assert selection.matches(letter_of(headers=consumer_headers(ErrorCode.UNKNOWN_TASK)))
        assert not selection.matches(letter_of(headers=consumer_headers(ErrorCode.TOO_LARGE)))

    def test_task(self) -> None:
        """The body's task_id."""
        selection = Selection(task_id=TASK)
        assert selection.matches(letter_of(body=body_of()))
        assert not selection.matches(letter_of(body=body_of(uuid.uuid4())))
        assert not selection.matches(letter_of(body=b"junk"))

    def test_failed_before_and_after(self) -> None:
        """Strictly before and strictly after; a letter without a time is never selected."""
        letter = letter_of(headers=consumer_headers())
        assert Selection(failed_before=NOW + timedelta(seconds=1)).matches(letter)
        assert not Selection(failed_before=NOW).matches(letter)
        assert Selection(failed_after=NOW - timedelta(seconds=1)).matches(letter)
        assert not Selection(failed_after=NOW).matches(letter)
        assert not Selection(failed_after=NOW - timedelta(days=9)).matches(letter_of(headers={}))

    def test_all_must_hold(self) -> None:
        """A letter matching one filter of two is not selected."""
        selection = Selection(errors=frozenset({"unknown_task"}), task_id=uuid.uuid4())
        assert not selection.matches(letter_of(body=body_of(), headers=consumer_headers()))

    def test_describe(self) -> None:
        """The filters in words."""
        assert Selection().describe() == "every dead letter"
        selection = Selection(errors=frozenset({"b", "a"}), task_id=TASK)
        assert selection.describe() == f"error a or b, task {TASK}"


class TestMoments:
    """--older-than and --newer-than take an age or a timestamp."""

    @pytest.mark.parametrize(
        ("text", "ago"),
        [
            ("90s", timedelta(seconds=90)),
            ("15m", timedelta(minutes=15)),
            ("2h", timedelta(hours=2)),
            ("1.5d", timedelta(hours=36)),
            ("1w", timedelta(weeks=1)),
            (" 3D ", timedelta(days=3)),
        ],
    )
    def test_ages(self, text: str, ago: timedelta) -> None:
        """An age counts back from now."""
        assert parse_moment(text, now=NOW) == NOW - ago

    def test_timestamp(self) -> None:
        """An RFC 3339 time with an offset is taken as it is."""
        assert parse_moment("2026-11-20T08:00:00+01:00", now=NOW) == datetime(
            2026, 11, 20, 7, 0, tzinfo=UTC
        )

    @pytest.mark.parametrize("text", ["", "2", "2y", "yesterday", "2026-11-20T08:00:00"])
    def test_refused(self, text: str) -> None:
        """Anything else, a time without an offset included, is a readable error."""
        with pytest.raises(ValueError, match="neither an age"):
            parse_moment(text, now=NOW)


class TestJudge:
    """What a replay does with each letter."""

    def test_send_what_is_selected(self) -> None:
        """Selected, under the limit, under --max-replays: sent."""
        assert judge(letter_of(), selection=Selection(), max_replays=3, room=1) is Verdict.SEND

    def test_leave_what_is_not_selected(self) -> None:
        """Filtered out: left."""
        selection = Selection(errors=frozenset({"too_large"}))
        assert judge(letter_of(), selection=selection, max_replays=3, room=None) is Verdict.LEAVE

    def test_leave_past_the_limit(self) -> None:
        """No room left under --limit: left, even if it is at --max-replays."""
        letter = letter_of(headers={"x-replay-count": 5})
        assert judge(letter, selection=Selection(), max_replays=3, room=0) is Verdict.LEAVE

    def test_held_back_at_max_replays(self) -> None:
        """Replayed --max-replays times already: held back, to be reported."""
        letter = letter_of(headers={"x-replay-count": 3})
        verdict = judge(letter, selection=Selection(), max_replays=3, room=None)
        assert verdict is Verdict.AT_MAX_REPLAYS
        assert judge(letter, selection=Selection(), max_replays=None, room=None) is Verdict.SEND


class TestCensus:
    """The counts and sample `dlq list` prints."""

    def test_groups_largest_first_with_their_largest_tasks(self) -> None:
        """Codes by count; within each, the tasks with the most letters."""
        census = Census(sample_size=2)
        other = uuid.uuid4()
        for code, task in [
            (ErrorCode.INVALID_JSON, None),
            (ErrorCode.UNKNOWN_TASK, TASK),
            (ErrorCode.UNKNOWN_TASK, other),
            (ErrorCode.UNKNOWN_TASK, TASK),
        ]:
            body = body_of(task) if task else b"junk"
            census.add(letter_of(body=body, headers=consumer_headers(code)))
        assert census.total == 4
        assert census.groups() == [
            {
                "error": "unknown_task",
                "count": 3,
                "tasks": [{"task_id": str(TASK), "count": 2}, {"task_id": str(other), "count": 1}],
            },
            {"error": "invalid_json", "count": 1, "tasks": [{"task_id": "-", "count": 1}]},
        ]

    def test_the_newest_few_newest_first(self) -> None:
        """The last letters read (the newest) are kept, and listed newest first."""
        census = Census(sample_size=2)
        for n in range(5):
            census.add(letter_of(message_id=f"m{n}"))
        assert [s["message_id"] for s in census.to_json()["newest"]] == ["m4", "m3"]

    def test_no_sample(self) -> None:
        """A sample size of 0 keeps none."""
        census = Census(sample_size=0)
        census.add(letter_of())
        assert census.to_json()["newest"] == []


class TestShown:
    """`dlq show` prints a whole message as JSON."""

    def test_json_body_parsed_and_headers_converted(self) -> None:
        """A JSON body is parsed; times and bytes in headers become text."""
        letter = letter_of(body=body_of(), headers={**consumer_headers(), "raw": b"ok"})
        whole = shown(letter)
        json.dumps(whole)
        assert whole["body"]["task_id"] == str(TASK)
        assert whole["headers"]["raw"] == "ok"
        assert whole["headers"]["x-failed-at"] == NOW.isoformat()

    def test_other_bodies_as_text(self) -> None:
        """A body that isn't JSON is shown as text, bad bytes replaced."""
        assert shown(letter_of(body=b"plain \xff"))["body"] == "plain \ufffd"

    def test_jsonable(self) -> None:
        """Nested tables, lists, times and decimals all convert."""
        value = {"a": [NOW, b"x", Decimal("1.5"), None, {"b": True}]}
        assert jsonable(value) == {"a": [NOW.isoformat(), "x", "1.5", None, {"b": True}]}


class TestDeadLetterQueueArguments:
    """The dead-letter queue never drops a message for its delivery count."""

    def test_3_x_has_no_limit(self) -> None:
        """3.x has no default limit, and -1 there would mean none allowed."""
        assert Topology().dead_letter_queue_arguments(broker_version="3.10.8") == {
            "x-queue-type": "quorum"
        }

    @pytest.mark.parametrize("version", ["4.0.5", "4.2.0", "5.0"])
    def test_4_x_turns_the_default_limit_off(self, version: str) -> None:
        """From 4.0 the default of 20 is turned off with -1."""
        arguments = Topology().dead_letter_queue_arguments(broker_version=version)
        assert arguments == {"x-queue-type": "quorum", "x-delivery-limit": -1}

    def test_an_unreadable_version_is_treated_as_old(self) -> None:
        """A version that doesn't parse gets no limit argument."""
        assert Topology().dead_letter_queue_arguments(broker_version="") == {
            "x-queue-type": "quorum"
        }
