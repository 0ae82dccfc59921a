"""Reading, selecting and exporting dead letters, the replayed copy, the filters' SQL: no server."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from consumer.broker.headers import BROKER_HEADERS, replay_headers
from consumer.deadletters import (
    ERROR_CODES,
    Census,
    DeadLetter,
    ErrorGroup,
    Selection,
    bare_letter,
    dead_letter_of,
    exported,
    jsonable,
    refusal_to_replay,
    shown,
    transit_letter,
)
from consumer.errors import ErrorCode
from consumer.moments import parse_moment
from consumer.store.queries import (
    DEAD_LETTERS_CLAIM,
    DEAD_LETTERS_EXTENT,
    dead_letter_arguments,
    dead_letter_sql,
)
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
    """A fake message with `fields` set, read as the dead-letter queue hands it over."""
    message = FakeMessage(**DEAD_LETTER | fields).incoming(transit=True, now=NOW)
    return transit_letter(message, now=NOW)


def own_headers() -> dict[str, Any]:
    """The headers the consumer's tools write (x-error and friends), unsigned."""
    return {
        "x-error": "unknown_task",
        "x-error-detail": "why",
        "x-original-routing-key": "history.error",
        "x-failed-at": NOW.isoformat(),
    }


def body_of(task: uuid.UUID | str = TASK) -> bytes:
    """A JSON body naming `task`."""
    return json.dumps({"task_id": str(task), "content": "x"}).encode()


def refused(message: FakeMessage, **fields: Any) -> DeadLetter:  # noqa: ANN401  # letter fields
    """The dead letter of `message`, refused as unknown_task unless `fields` say otherwise."""
    values: dict[str, Any] = {"code": "unknown_task", "detail": "d", "failed_at": NOW} | fields
    return dead_letter_of(message.incoming(now=NOW), **values)


class TestDeadLetterOf:
    """A message the consumer refuses becomes a dead letter as it was received."""

    def test_detail_on_one_line_of_a_readable_length(self) -> None:
        """Line breaks and runs of spaces become one space; a long detail is cut at 1000."""
        message = FakeMessage(b"{}", message_id="m")
        assert refused(message, detail=" a\n\tb  c\r\n").detail == "a b c"
        assert refused(message, detail="x" * 5000).detail == "x" * 1000

    def test_keeps_the_publishers_headers(self) -> None:
        """The publisher's headers stay as they were; its task is read from the body."""
        message = FakeMessage(body_of(), message_id="m", headers={"trace-id": "abc"})
        letter = refused(message)
        assert letter.headers == {"trace-id": "abc"}
        assert (letter.replay_count, letter.task_id, letter.failed_at) == (0, str(TASK), NOW)

    def test_a_signed_replay_count_is_kept(self) -> None:
        """x-replay-count on a copy the consumer signed is the letter's replay count."""
        message = FakeMessage(body_of(), message_id="m", headers={"x-replay-count": 2}).signed()
        letter = refused(message)
        assert letter.replay_count == 2
        assert letter.headers == {}

    @pytest.mark.parametrize("value", [2, 2**31, -1, "3"])
    def test_a_publishers_replay_count_changes_nothing(self, value: object) -> None:
        """Unsigned, any x-replay-count (2**31 overflowed the column once) counts as none."""
        message = FakeMessage(body_of(), message_id="m", headers={"x-replay-count": value})
        letter = refused(message)
        assert letter.replay_count == 0
        assert letter.headers == {}

    def test_a_long_body_is_kept_as_its_start(self) -> None:
        """Over 1 MiB, the letter keeps 64 KiB, the length and the SHA-256: it can't be replayed."""
        body = b"x" * (3 << 20)
        letter = refused(FakeMessage(body, message_id="m"), code="too_large")
        assert letter.body == body[: 64 << 10]
        assert letter.body_bytes == len(body)
        assert letter.body_sha256 == hashlib.sha256(body).digest()
        assert refusal_to_replay(letter) is not None
        assert "3,145,728 bytes" in (refusal_to_replay(letter) or "")
        assert letter.summary()["body_truncated"]["bytes"] == len(body)

    def test_a_body_of_1_mib_is_kept_whole(self) -> None:
        """Up to the event limit a body is kept byte for byte, and can be replayed."""
        body = b"y" * (1 << 20)
        letter = refused(FakeMessage(body, message_id="m"))
        assert (letter.body, letter.body_bytes, letter.body_sha256) == (body, None, None)
        assert refusal_to_replay(letter) is None

    def test_a_bare_letter_keeps_only_what_is_certain(self) -> None:
        """The last resort keeps the body, ids and key, and drops headers and properties."""
        message = FakeMessage(body_of(), message_id="m", headers={"a": 1}).incoming(now=NOW)
        letter = bare_letter(message, code="internal_error", detail="TypeError: x", failed_at=NOW)
        assert (letter.headers, letter.properties, letter.body) == ({}, {}, body_of())
        assert (letter.code, letter.message_id) == ("internal_error", "m")


class TestReading:
    """A message from the dead-letter queue says why the broker put it there, if it did."""

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
        assert letter.headers["x-death"][0]["reason"] == "delivery_limit"

    @pytest.mark.parametrize(
        ("reason", "code"),
        [("rejected", "rejected"), ("expired", "ttl_expired"), ("maxlen", "queue_full")],
    )
    def test_other_broker_reasons(self, reason: str, code: str) -> None:
        """Each broker reason has a code of its own; TTL expiry is not the event's `expired`."""
        letter = letter_of(headers={"x-death": [{"reason": reason, "queue": "q"}]})
        assert letter.code == code
        assert f"reason: {reason}" in letter.detail

    def test_x_death_on_a_message_sent_straight_to_the_queue(self) -> None:
        """Through the default exchange nobody dead-lettered it, whatever its x-death says."""
        death = {"reason": "delivery_limit", "queue": "q", "time": NOW}
        letter = letter_of(headers={"x-death": [death]}, exchange="")
        assert letter.code == "unknown"
        assert "published straight to the dead-letter queue" in letter.detail
        assert letter.failed_at == NOW  # the time it was moved, not the one it claims

    def test_the_consumers_headers_from_a_publisher_change_nothing(self) -> None:
        """x-error and friends on a message nobody signed: unknown, and kept out of the row."""
        headers = {**own_headers(), "x-failed-at": "0001-01-01T00:00:00+23:59"}
        letter = letter_of(body=body_of(), headers=headers, exchange="")
        assert (letter.code, letter.failed_at, letter.routing_key) == (
            "unknown",
            NOW,
            "history.agent_turn",
        )
        assert letter.headers == {}

    def test_neither_header(self) -> None:
        """A message nobody explained is `unknown`, with a detail saying so."""
        letter = letter_of(headers={})
        assert letter.code == "unknown"
        assert letter.failed_at == NOW

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

    def test_properties_that_are_set(self) -> None:
        """Properties left unset don't appear."""
        letter = letter_of(app_id="agent-7")
        assert letter.properties["app_id"] == "agent-7"
        assert letter.properties["delivery_mode"] == 2
        assert "reply_to" not in letter.properties


class TestReplayHeaders:
    """A replayed copy carries the publisher's headers and the count, nothing else of ours."""

    def test_counts_from_the_row(self) -> None:
        """x-replay-count is the row's count plus one; the publisher's headers are kept."""
        headers = replay_headers({"app": "kept"}, replay_count=2, message_id="m")
        assert headers == {"x-replay-count": 3, "app": "kept"}

    def test_stored_headers_of_the_consumers_names_are_dropped(self) -> None:
        """Headers a publisher set (or an older release stored) never come back as ours."""
        stored = {
            **own_headers(),
            "x-unknown-task-since": NOW.isoformat(),
            "x-retry-count": 9,
            "x-received-at": "t",
            "x-replay-count": 50,
        }
        assert replay_headers(stored, replay_count=0, message_id="m") == {"x-replay-count": 1}

    def test_no_broker_headers(self) -> None:
        """The broker's own headers are never copied."""
        headers = replay_headers(dict.fromkeys(BROKER_HEADERS, "x"), replay_count=0, message_id="m")
        assert headers == {"x-replay-count": 1}

    def test_no_message_id_is_marked(self) -> None:
        """A letter without a message_id is sent as a copy that has none."""
        headers = replay_headers({}, replay_count=0, message_id=None)
        assert headers == {"x-replay-count": 1, "x-no-message-id": True}


class TestSelection:
    """Filters: error codes, task, failure time; described in words."""

    def test_everything(self) -> None:
        """No filter selects every letter."""
        assert Selection().is_everything
        assert not Selection(task_id=TASK).is_everything

    def test_describe(self) -> None:
        """The filters in words."""
        assert Selection().describe() == "every dead letter"
        selection = Selection(
            errors=frozenset({"b", "a"}), task_id=TASK, failed_after=NOW, failed_before=NOW
        )
        assert selection.describe() == (
            f"error a or b, task {TASK}, failed at or after 2026-11-26T12:00:00+00:00,"
            " failed before 2026-11-26T12:00:00+00:00"
        )

    def test_the_known_codes(self) -> None:
        """The consumer's codes, the broker's reasons, and `unknown`; sorted."""
        assert set(ERROR_CODES) == {code.value for code in ErrorCode} | {
            "rejected",
            "ttl_expired",
            "queue_full",
            "unknown",
        }
        assert list(ERROR_CODES) == sorted(ERROR_CODES)


class TestFilterSql:
    """A selection becomes constant SQL fragments and eight parameters, never text from values."""

    def test_no_filter(self) -> None:
        """Each filter's fragment only checks that its parameter is NULL."""
        sql = dead_letter_sql(DEAD_LETTERS_EXTENT, Selection())
        assert sql == (
            "SELECT count(*) AS n, max(id) AS last FROM task_build_history_dead_letters WHERE true"
            " AND $1::text[] IS NULL AND $2::uuid IS NULL AND $3::timestamptz IS NULL"
            " AND $4::timestamptz IS NULL AND $5::text IS NULL AND $6::text IS NULL"
            " AND $7::bigint[] IS NULL AND $8::bigint IS NULL"
        )
        assert dead_letter_arguments(Selection()) == (None,) * 8

    def test_every_filter(self) -> None:
        """Codes, the task, before (exclusive), after (inclusive), key, text, ids, through."""
        later = NOW + timedelta(hours=1)
        selection = Selection(
            errors=frozenset({"unknown_task", "expired"}),
            task_id=TASK,
            failed_before=later,
            failed_after=NOW,
            routing_key="history.error",
            text="100%_done",
            ids=frozenset({9, 3}),
            through=12,
        )
        sql = dead_letter_sql(DEAD_LETTERS_EXTENT, selection)
        assert sql.endswith(
            " AND error = ANY ($1::text[]) AND task_id = $2 AND failed_at < $3 AND failed_at >= $4"
            " AND routing_key = $5"
            ' AND (detail COLLATE "C" ILIKE $6 OR message_id COLLATE "C" ILIKE $6)'
            " AND id = ANY ($7::bigint[]) AND id <= $8"
        )
        assert dead_letter_arguments(selection) == (
            ["expired", "unknown_task"],
            TASK,
            later,
            NOW,
            "history.error",
            "%100\\%\\_done%",
            [3, 9],
            12,
        )

    def test_the_tail_follows_the_filters(self) -> None:
        """A replay batch: the filters, then its window and lock, numbered from $9."""
        sql = dead_letter_sql(DEAD_LETTERS_CLAIM, Selection(task_id=TASK))
        assert " AND task_id = $2 AND $3::timestamptz IS NULL" in sql
        assert sql.endswith(
            " AND id > $9 AND id <= $10 ORDER BY id LIMIT $11 FOR UPDATE SKIP LOCKED"
        )

    def test_values_never_become_text(self) -> None:
        """A code or text that looks like SQL travels as a parameter only."""
        hostile = "x'); DROP TABLE tasks; --"
        selection = Selection(errors=frozenset({hostile}), text=hostile, routing_key=hostile)
        sql = dead_letter_sql(DEAD_LETTERS_CLAIM, selection)
        assert hostile not in sql
        assert "DROP" not in sql
        arguments = dead_letter_arguments(selection)
        assert arguments[0] == [hostile]
        assert arguments[4] == hostile
        assert arguments[5] == f"%{hostile}%"


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


class TestCensus:
    """What `dlq list --json` prints of the database's counts."""

    def test_to_json(self) -> None:
        """The total, each code with its tasks (None for no task), the newest summaries."""
        census = Census(
            total=4,
            groups=(
                ErrorGroup("unknown_task", 3, ((str(TASK), 2), ("t2", 1))),
                ErrorGroup("invalid_json", 1, ((None, 1),)),
            ),
            newest=(stored(id=9, message_id="m9"),),
        )
        listing = census.to_json()
        json.dumps(listing)
        assert listing["total"] == 4
        assert listing["by_error"] == [
            {
                "error": "unknown_task",
                "count": 3,
                "tasks": [{"task_id": str(TASK), "count": 2}, {"task_id": "t2", "count": 1}],
            },
            {"error": "invalid_json", "count": 1, "tasks": [{"task_id": None, "count": 1}]},
        ]
        (newest,) = listing["newest"]
        assert (newest["id"], newest["message_id"], newest["error"]) == (9, "m9", "unknown_task")


def stored(**fields: Any) -> DeadLetter:  # noqa: ANN401  # any field of DeadLetter
    """A dead letter as a row of the table holds it, with `fields` replaced."""
    row: dict[str, Any] = {
        "id": 7,
        "message_id": "m7",
        "task_id": str(TASK),
        "routing_key": "history.agent_turn",
        "code": "unknown_task",
        "detail": "task_id: no task exists",
        "failed_at": NOW,
        "replay_count": 1,
        "headers": {"x-error": "unknown_task", "app": "kept"},
        "properties": {"content_type": "application/json"},
        "body": body_of(),
    }
    return DeadLetter(**row | fields)


class TestExported:
    """One JSON line of `dlq export` per letter."""

    def test_a_utf8_body_as_text(self) -> None:
        """Every field of the summary, the body as text, properties and headers."""
        line = exported(stored(body='{"content": "héllo"}'.encode()))
        json.dumps(line)
        assert line["body"] == '{"content": "héllo"}'
        assert "body_base64" not in line
        assert {
            "id",
            "message_id",
            "error",
            "detail",
            "routing_key",
            "task_id",
            "failed_at",
            "replay_count",
            "properties",
            "headers",
        } <= set(line)
        assert (line["id"], line["error"], line["failed_at"]) == (
            7,
            "unknown_task",
            NOW.isoformat(),
        )
        assert line["headers"]["app"] == "kept"

    def test_a_binary_body_as_base64(self) -> None:
        """A body that is not UTF-8 is `body_base64`, byte for byte."""
        raw = b"\xff\xfe\x00binary"
        line = exported(stored(body=raw))
        assert "body" not in line
        assert base64.b64decode(line["body_base64"]) == raw


class TestShown:
    """`dlq show` prints a whole message as JSON."""

    def test_json_body_parsed_and_headers_converted(self) -> None:
        """A JSON body is parsed; times and bytes in headers become text."""
        letter = letter_of(body=body_of(), headers={"raw": b"ok", "when": NOW})
        whole = shown(letter)
        json.dumps(whole)
        assert whole["body"]["task_id"] == str(TASK)
        assert whole["headers"]["raw"] == "ok"
        assert whole["headers"]["when"] == NOW.isoformat()

    def test_other_bodies_as_text(self) -> None:
        """A UTF-8 body that isn't JSON is shown as text, and nothing else."""
        whole = shown(letter_of(body="plain é".encode()))
        assert whole["body"] == "plain é"
        assert "body_base64" not in whole

    def test_bytes_that_are_not_utf8_are_never_replaced(self) -> None:
        """Not UTF-8: no text with replacement characters, but the bytes in base64."""
        whole = shown(letter_of(body=b"plain \xff"))
        assert whole["body"] is None
        assert base64.b64decode(whole["body_base64"]) == b"plain \xff"

    def test_a_kept_prefix_cut_inside_a_character_is_still_text(self) -> None:
        """A prefix of a long body may end mid-character: the whole characters before it show."""
        cut = "ab€".encode()[:-1]  # the euro sign's last byte cut off
        letter = dataclasses.replace(letter_of(body=cut), body_bytes=4, body_sha256=b"\0" * 32)
        assert shown(letter)["body"] == "ab"

    def test_jsonable(self) -> None:
        """Nested tables, lists, times and decimals all convert."""
        value = {"a": [NOW, b"x", Decimal("1.5"), None, {"b": True}]}
        assert jsonable(value) == {"a": [NOW.isoformat(), "x", "1.5", None, {"b": True}]}


class TestDeadLetterQueueArguments:
    """The dead-letter queue has a delivery limit: nothing is delivered for ever."""

    @pytest.mark.parametrize("limit", [1, 20])
    def test_the_events_queues_limit(self, limit: int) -> None:
        """The same limit as the events queue, on 3.x and 4.x alike: never -1."""
        arguments = Topology(delivery_limit=limit).dead_letter_queue_arguments()
        assert arguments == {"x-queue-type": "quorum", "x-delivery-limit": limit}
