"""The event rules of contract section 1: what parse_event accepts, refuses, and why."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from consumer.entries import ContextType, NewEntry
from consumer.errors import ErrorCode, InvalidEventError, TaskHistoryError
from consumer.events import MAX_BODY_BYTES, Event, check_retention, parse_event

TASK_ID = uuid.UUID("0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10")
WORKSPACE_ID = uuid.UUID("6a1d9f0c-5b2e-4c3a-8f7d-1e2b3c4d5e6f")
SESSION_ID = uuid.UUID("9c8b7a69-5e4d-4c3b-a291-80f1e2d3c4b5")
EVENT_ID = uuid.UUID("1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9")
MESSAGE_ID = uuid.UUID("7d6c5b4a-3928-4716-a504-f3e2d1c0b9a8")
RECEIVED_AT = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def event(**fields: object) -> dict[str, object]:
    """A valid event with only the required fields, overridden or extended by `fields`."""
    body: dict[str, object] = {
        "task_id": str(TASK_ID),
        "context_type": "agent_turn",
        "content": "ran the tests",
    }
    body.update(fields)
    return body


def without(name: str) -> dict[str, object]:
    """A valid event lacking the field `name`."""
    return {key: value for key, value in event().items() if key != name}


def encode(fields: dict[str, object]) -> bytes:
    """The event as a UTF-8 JSON body, non-ASCII characters unescaped."""
    return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def parse(body: bytes, *, message_id: str | None = None) -> NewEntry:
    """Parse a body received at RECEIVED_AT."""
    return parse_event(body, message_id=message_id, received_at=RECEIVED_AT)


def refusal(body: bytes, *, message_id: str | None = None) -> InvalidEventError:
    """The error parse_event raises for `body`."""
    with pytest.raises(InvalidEventError) as caught:
        parse(body, message_id=message_id)
    return caught.value


def retention_error(
    created_at: datetime, *, retention: timedelta, now: datetime
) -> InvalidEventError | None:
    """The error check_retention raises for an entry created at `created_at`, or None."""
    try:
        check_retention(entry(created_at), retention=retention, now=now)
    except InvalidEventError as error:
        return error
    return None


def entry(created_at: datetime) -> NewEntry:
    """A row created at `created_at`."""
    return NewEntry(
        id=EVENT_ID,
        task_id=TASK_ID,
        workspace_id=None,
        session_id=None,
        context_type="agent_turn",
        content="x",
        metadata=None,
        created_at=created_at,
    )


class TestErrorCode:
    """The `x-error` codes are the contract's strings."""

    def test_values(self) -> None:
        """Each code's value is the string the contract names."""
        assert {code.value for code in ErrorCode} == {
            "invalid_json",
            "invalid_event",
            "too_large",
            "unknown_task",
            "expired",
            "delivery_limit",
            "database_rejected",
        }

    def test_is_a_string(self) -> None:
        """A code formats as its plain value, ready for a header."""
        assert str(ErrorCode.TOO_LARGE) == "too_large"
        assert f"{ErrorCode.INVALID_JSON}" == "invalid_json"


class TestInvalidEventError:
    """The error carries its code and a detail line."""

    def test_attributes_and_message(self) -> None:
        """The code and detail are kept, and the message joins them."""
        error = InvalidEventError(ErrorCode.INVALID_EVENT, "content: too long")
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "content: too long"
        assert str(error) == "invalid_event: content: too long"

    def test_is_a_project_error(self) -> None:
        """It is one of the project's exceptions."""
        assert isinstance(InvalidEventError(ErrorCode.EXPIRED, "old"), TaskHistoryError)


class TestValidEvent:
    """A valid event becomes a row with the event's values."""

    def test_minimal_event(self) -> None:
        """Only the required fields give a row with nulls and the receive time."""
        row = parse(encode(event()))
        assert row.task_id == TASK_ID
        assert row.workspace_id is None
        assert row.session_id is None
        assert row.context_type == "agent_turn"
        assert row.content == "ran the tests"
        assert row.metadata is None
        assert row.created_at == RECEIVED_AT

    def test_full_event(self) -> None:
        """Every field given is carried into the row."""
        row = parse(
            encode(
                event(
                    id=str(EVENT_ID),
                    workspace_id=str(WORKSPACE_ID),
                    session_id=str(SESSION_ID),
                    context_type="chat_message",
                    content="héllo",
                    metadata={"model": "x", "tokens": 12},
                    created_at="2025-01-01T11:00:00Z",
                )
            )
        )
        assert row.id == EVENT_ID
        assert row.workspace_id == WORKSPACE_ID
        assert row.session_id == SESSION_ID
        assert row.context_type == "chat_message"
        assert row.content == "héllo"
        assert row.metadata is not None
        assert json.loads(row.metadata) == {"model": "x", "tokens": 12}
        assert row.created_at == datetime(2025, 1, 1, 11, 0, tzinfo=UTC)

    def test_workspace_and_session_may_be_null(self) -> None:
        """Explicit nulls for workspace_id and session_id are accepted."""
        row = parse(encode(event(workspace_id=None, session_id=None)))
        assert row.workspace_id is None
        assert row.session_id is None

    def test_unknown_fields_ignored(self) -> None:
        """Fields the contract doesn't name are ignored, not refused."""
        row = parse(encode(event(priority=3, tags=["a"], nested={"x": None})))
        assert row.task_id == TASK_ID
        assert row.content == "ran the tests"

    def test_returns_a_new_entry(self) -> None:
        """The result is the row type the store inserts."""
        assert isinstance(parse(encode(event())), NewEntry)


class TestEventId:
    """The id comes from the body, else a UUID message_id, else a new UUID."""

    def test_id_from_body(self) -> None:
        """The body's id is used when there is no message_id."""
        assert parse(encode(event(id=str(EVENT_ID)))).id == EVENT_ID

    def test_body_id_wins_over_message_id(self) -> None:
        """The body's id is used even when the message_id is another UUID."""
        row = parse(encode(event(id=str(EVENT_ID))), message_id=str(MESSAGE_ID))
        assert row.id == EVENT_ID

    def test_message_id_when_body_has_none(self) -> None:
        """A UUID message_id supplies the id of a body without one."""
        assert parse(encode(event()), message_id=str(MESSAGE_ID)).id == MESSAGE_ID

    def test_message_id_when_body_id_is_null(self) -> None:
        """A null id in the body counts as absent."""
        assert parse(encode(event(id=None)), message_id=str(MESSAGE_ID)).id == MESSAGE_ID

    def test_message_id_in_upper_case(self) -> None:
        """A message_id in upper-case hex is the same UUID."""
        row = parse(encode(event()), message_id=str(MESSAGE_ID).upper())
        assert row.id == MESSAGE_ID

    @pytest.mark.parametrize("message_id", [None, "", "order-42", "1234"])
    def test_new_uuid_otherwise(self, message_id: str | None) -> None:
        """Without a body id or a UUID message_id, each parse makes a fresh UUID."""
        body = encode(event())
        first = parse(body, message_id=message_id).id
        second = parse(body, message_id=message_id).id
        assert isinstance(first, uuid.UUID)
        assert first.version == 4
        assert first != second

    def test_invalid_body_id(self) -> None:
        """An id in the body that is not a UUID is refused, not replaced."""
        error = refusal(encode(event(id="not-a-uuid")), message_id=str(MESSAGE_ID))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("id: ")


class TestRequiredUuids:
    """The task_id is a required UUID; workspace_id and session_id are UUIDs when given."""

    def test_task_id_missing(self) -> None:
        """An event without task_id is refused, naming the field."""
        error = refusal(encode(without("task_id")))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "task_id: Field required"

    @pytest.mark.parametrize("value", [None, "", "abc", 42, "0b6f1c1e-3c1a-4d57-9a0e"])
    def test_task_id_not_a_uuid(self, value: object) -> None:
        """A task_id that is null or not a UUID is refused, naming the field."""
        error = refusal(encode(event(task_id=value)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("task_id: ")

    @pytest.mark.parametrize("field", ["workspace_id", "session_id"])
    def test_optional_ids_not_a_uuid(self, field: str) -> None:
        """A workspace_id or session_id that is not a UUID is refused, naming the field."""
        error = refusal(encode(event(**{field: "nope"})))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith(f"{field}: ")


class TestContextType:
    """Exactly the six context types are accepted."""

    @pytest.mark.parametrize(
        "context_type",
        [
            "chat_message",
            "execution_step",
            "agent_turn",
            "setup_complete",
            "error",
            "status_change",
        ],
    )
    def test_each_accepted(self, context_type: str) -> None:
        """Each of the contract's six types is stored as given."""
        assert parse(encode(event(context_type=context_type))).context_type == context_type

    def test_six_types(self) -> None:
        """The enum holds exactly the contract's six types."""
        assert len(ContextType) == 6

    @pytest.mark.parametrize("context_type", ["", "CHAT_MESSAGE", "chat", "tool_call", None, 1])
    def test_others_refused(self, context_type: object) -> None:
        """Anything else, including another case, is refused, naming the field."""
        error = refusal(encode(event(context_type=context_type)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("context_type: ")

    def test_missing_refused(self) -> None:
        """An event without context_type is refused."""
        assert refusal(encode(without("context_type"))).detail == "context_type: Field required"


class TestContent:
    """Content is 1 to 65,536 characters with no NUL."""

    def test_one_character(self) -> None:
        """A single character is enough."""
        assert parse(encode(event(content="x"))).content == "x"

    def test_maximum_counts_characters(self) -> None:
        """65,536 four-byte characters are accepted: the limit is characters, not bytes."""
        content = "\N{GRINNING FACE}" * 65_536
        assert parse(encode(event(content=content))).content == content

    def test_maximum_with_escapes(self) -> None:
        """Characters sent as JSON surrogate-pair escapes count once each."""
        content = "\N{GRINNING FACE}" * 65_536
        body = json.dumps(event(content=content), ensure_ascii=True).encode("ascii")
        assert len(parse(body).content) == 65_536

    def test_too_long(self) -> None:
        """65,537 characters are refused, naming the field."""
        error = refusal(encode(event(content="a" * 65_537)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("content: ")

    def test_empty(self) -> None:
        """An empty string is refused, naming the field."""
        error = refusal(encode(event(content="")))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("content: ")

    @pytest.mark.parametrize("content", ["\x00", "a\x00b", "end\x00"])
    def test_nul(self, content: str) -> None:
        """A NUL character anywhere in the content is refused."""
        error = refusal(encode(event(content=content)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "content: contains a NUL character"

    def test_backslash_u0000_text(self) -> None:
        """A literal backslash followed by u0000 is text, not a NUL."""
        assert parse(encode(event(content="\\u0000"))).content == "\\u0000"

    @pytest.mark.parametrize("content", [None, 5, ["a"], {"a": 1}])
    def test_not_a_string(self, content: object) -> None:
        """Content that isn't a string is refused."""
        error = refusal(encode(event(content=content)))
        assert error.detail.startswith("content: ")

    def test_missing(self) -> None:
        """An event without content is refused."""
        assert refusal(encode(without("content"))).detail == "content: Field required"


class TestMetadata:
    """Metadata is an object, a string holding one, or null; bounded; without NUL."""

    def test_object_stored_as_json_text(self) -> None:
        """An object is stored as JSON text of the same object."""
        metadata = {"b": [1, 2.5, True, None], "a": {"nested": "é"}}
        row = parse(encode(event(metadata=metadata)))
        assert row.metadata is not None
        assert json.loads(row.metadata) == metadata

    def test_string_nested_beyond_python_is_refused(self) -> None:
        """A string form nested deeper than Python's parser goes is invalid, not a crash."""
        deep = "[" * 100_000 + "]" * 100_000
        error = refusal(encode(event(metadata=deep)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("metadata: ")

    def test_string_with_a_lone_surrogate_is_refused(self) -> None:
        """A string form whose JSON escapes a lone surrogate is invalid, not a crash."""
        error = refusal(encode(event(metadata='{"a": "\\ud800"}')))
        assert error.code is ErrorCode.INVALID_EVENT
        assert "surrogate" in error.detail

    def test_empty_object(self) -> None:
        """An empty object is an object."""
        assert parse(encode(event(metadata={}))).metadata == "{}"

    def test_string_holding_object_stored_as_object(self) -> None:
        """The seed's string form is stored as the object it holds, not as a string."""
        row = parse(encode(event(metadata='{"tool": "pytest", "passed": 3}')))
        assert row.metadata is not None
        assert json.loads(row.metadata) == {"tool": "pytest", "passed": 3}

    def test_null(self) -> None:
        """Null metadata is stored as null."""
        assert parse(encode(event(metadata=None))).metadata is None

    @pytest.mark.parametrize("metadata", [5, "5", [1], "[1]", True, "null", '"text"'])
    def test_not_an_object(self, metadata: object) -> None:
        """Anything but an object, directly or in a string, is refused, naming the field."""
        error = refusal(encode(event(metadata=metadata)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("metadata: ")

    def test_string_not_json(self) -> None:
        """A string that holds no JSON at all is refused, naming the field."""
        error = refusal(encode(event(metadata="{not json")))
        assert error.detail == "metadata: is a string that does not hold JSON"

    def test_size_at_limit(self) -> None:
        """Exactly 65,536 bytes serialized is accepted."""
        metadata = {"k": "x" * (65_536 - len('{"k":""}'))}
        row = parse(encode(event(metadata=metadata)))
        assert row.metadata is not None
        assert len(row.metadata.encode("utf-8")) == 65_536

    def test_size_over_limit(self) -> None:
        """One byte over 65,536 serialized is refused, naming the field."""
        metadata = {"k": "x" * (65_537 - len('{"k":""}'))}
        error = refusal(encode(event(metadata=metadata)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("metadata: 65537 bytes serialized")

    def test_size_counts_bytes(self) -> None:
        """The limit is in UTF-8 bytes, so two-byte characters count twice."""
        at_limit = {"k": "é" * ((65_536 - len('{"k":""}')) // 2)}
        over = {"k": "é" * ((65_536 - len('{"k":""}')) // 2 + 1)}
        assert parse(encode(event(metadata=at_limit))).metadata is not None
        assert refusal(encode(event(metadata=over))).detail.startswith("metadata: ")

    def test_size_of_string_form(self) -> None:
        """The string form is held to the same limit."""
        metadata = json.dumps({"k": "x" * 65_536})
        error = refusal(encode(event(metadata=metadata)))
        assert error.detail.startswith("metadata: ")

    @pytest.mark.parametrize(
        "metadata",
        [
            {"a": "\x00"},
            {"\x00": 1},
            {"a": "x\x00y"},
            {"a": [{"b": ["deep\x00"]}]},
            {"a": "\\\x00"},
        ],
    )
    def test_nul(self, metadata: dict[str, Any]) -> None:
        """A NUL in any key or nested string is refused."""
        error = refusal(encode(event(metadata=metadata)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "metadata: contains a NUL character"

    def test_nul_in_string_form(self) -> None:
        """An escaped NUL inside the string form is refused too."""
        error = refusal(encode(event(metadata=json.dumps({"a": "\x00"}))))
        assert error.detail == "metadata: contains a NUL character"

    def test_nul_escape_in_raw_body(self) -> None:
        r"""The six characters \u0000 in the body's JSON are a NUL and are refused."""
        body = (
            b'{"task_id": "%s", "context_type": "error", "content": "x",'
            b' "metadata": {"a": "\\u0000"}}'
        )
        error = refusal(body % str(TASK_ID).encode())
        assert error.detail == "metadata: contains a NUL character"

    @pytest.mark.parametrize("text", ["\\u0000", "\\\\u0000", "a\\u0000b"])
    def test_backslash_u0000_text(self, text: str) -> None:
        """Literal backslashes followed by u0000 are text, not a NUL, and are kept."""
        row = parse(encode(event(metadata={"path": text})))
        assert row.metadata is not None
        assert json.loads(row.metadata) == {"path": text}

    def test_backslash_u0000_text_in_string_form(self) -> None:
        """The string form keeps a literal backslash-u0000 as text too."""
        row = parse(encode(event(metadata=json.dumps({"path": "\\u0000"}))))
        assert row.metadata is not None
        assert json.loads(row.metadata) == {"path": "\\u0000"}

    @pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
    def test_nan_and_infinity(self, number: bytes) -> None:
        """NaN and the infinities are not JSON numbers and are refused."""
        body = b'{"task_id": "%s", "context_type": "error", "content": "x", "metadata": {"n": %s}}'
        error = refusal(body % (str(TASK_ID).encode(), number))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "metadata: NaN and Infinity are not JSON numbers"

    def test_nan_in_string_form(self) -> None:
        """NaN inside the string form is refused as well."""
        error = refusal(encode(event(metadata='{"n": NaN}')))
        assert error.detail == "metadata: NaN and Infinity are not JSON numbers"


class TestCreatedAt:
    """The created_at field is RFC 3339 with an offset, defaulting to the receive time."""

    def test_absent_is_received_at(self) -> None:
        """Without created_at the row is dated when it was received."""
        assert parse(encode(event())).created_at == RECEIVED_AT

    def test_null_is_received_at(self) -> None:
        """A null created_at counts as absent."""
        assert parse(encode(event(created_at=None))).created_at == RECEIVED_AT

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-12-31T08:30:00Z", datetime(2024, 12, 31, 8, 30, tzinfo=UTC)),
            ("2024-12-31T08:30:00.123456+00:00", datetime(2024, 12, 31, 8, 30, 0, 123456, UTC)),
            (
                "2024-12-31T10:30:00+02:00",
                datetime(2024, 12, 31, 10, 30, tzinfo=timezone(timedelta(hours=2))),
            ),
        ],
    )
    def test_rfc3339_with_offset(self, text: str, expected: datetime) -> None:
        """An RFC 3339 timestamp with Z or a numeric offset is the instant it names."""
        created_at = parse(encode(event(created_at=text))).created_at
        assert created_at == expected
        assert created_at.utcoffset() == expected.utcoffset()

    def test_naive_refused(self) -> None:
        """A timestamp without an offset is refused, naming the field."""
        error = refusal(encode(event(created_at="2024-12-31T08:30:00")))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("created_at: ")

    @pytest.mark.parametrize("value", [1735633800, 1735633800.5, -1])
    def test_numbers_refused(self, value: object) -> None:
        """Seconds since the epoch, as a JSON number, are refused."""
        error = refusal(encode(event(created_at=value)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("created_at: ")

    @pytest.mark.parametrize(
        "value",
        ["1735633800", "99999999999", "0", "-1", "2024-12-31T08:30Z", "2024-12-31_08:30:00Z"],
    )
    def test_non_rfc3339_strings_refused(self, value: str) -> None:
        """Digit strings (read by pydantic as epoch times) and other non-RFC 3339 forms fail."""
        error = refusal(encode(event(created_at=value)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("created_at: must be an RFC 3339 timestamp")

    @pytest.mark.parametrize("value", ["yesterday", "2024-13-01T00:00:00Z", "", True])
    def test_garbage_refused(self, value: object) -> None:
        """Anything that isn't a timestamp is refused, naming the field."""
        error = refusal(encode(event(created_at=value)))
        assert error.detail.startswith("created_at: ")

    def test_exactly_five_minutes_ahead(self) -> None:
        """Exactly five minutes in the future is allowed."""
        ahead = RECEIVED_AT + timedelta(minutes=5)
        row = parse(encode(event(created_at=ahead.isoformat())))
        assert row.created_at == ahead

    def test_just_over_five_minutes_ahead(self) -> None:
        """A microsecond beyond five minutes in the future is refused."""
        ahead = RECEIVED_AT + timedelta(minutes=5, microseconds=1)
        error = refusal(encode(event(created_at=ahead.isoformat())))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("created_at: ")
        assert "in the future" in error.detail

    def test_future_judged_across_offsets(self) -> None:
        """The five minutes are measured between instants, whatever the offset."""
        plus_two = timezone(timedelta(hours=2))
        ok = (RECEIVED_AT + timedelta(minutes=5)).astimezone(plus_two)
        late = (RECEIVED_AT + timedelta(minutes=6)).astimezone(plus_two)
        assert parse(encode(event(created_at=ok.isoformat()))).created_at == ok
        assert refusal(encode(event(created_at=late.isoformat()))).detail.startswith("created_at: ")

    def test_past_is_fine(self) -> None:
        """A timestamp in the past is kept as given."""
        past = RECEIVED_AT - timedelta(days=3)
        assert parse(encode(event(created_at=past.isoformat()))).created_at == past


class TestBody:
    """The body as a whole: size, encoding, JSON, an object."""

    def test_over_one_mib_not_parsed(self) -> None:
        """A body over 1 MiB is too_large, even when it isn't JSON at all."""
        error = refusal(b"\xff" * (MAX_BODY_BYTES + 1))
        assert error.code is ErrorCode.TOO_LARGE
        assert str(MAX_BODY_BYTES + 1) in error.detail

    def test_exactly_one_mib(self) -> None:
        """A valid body of exactly 1 MiB is parsed."""
        small = encode(event(padding=""))
        body = encode(event(padding="x" * (MAX_BODY_BYTES - len(small))))
        assert len(body) == MAX_BODY_BYTES
        assert parse(body).task_id == TASK_ID

    def test_one_mib_limit_constant(self) -> None:
        """The limit is 1 MiB."""
        assert MAX_BODY_BYTES == 1_048_576

    @pytest.mark.parametrize(
        "body",
        [b"", b"{", b"not json", b'{"task_id": }', b'{"a": 1} trailing', b"{'a': 1}"],
    )
    def test_invalid_json(self, body: bytes) -> None:
        """A body that isn't JSON is invalid_json."""
        error = refusal(body)
        assert error.code is ErrorCode.INVALID_JSON
        assert error.detail.startswith("body is not valid JSON")

    def test_not_utf8(self) -> None:
        """A body with bytes that aren't UTF-8 is invalid_json."""
        body = encode(event(content="caf\N{LATIN SMALL LETTER E WITH ACUTE}"))
        latin1 = body.decode("utf-8").encode("latin-1")
        assert refusal(latin1).code is ErrorCode.INVALID_JSON

    def test_not_utf8_at_start(self) -> None:
        """A body that starts with a byte that can't begin UTF-8 is invalid_json."""
        assert refusal(b"\xff\xfe{}").code is ErrorCode.INVALID_JSON

    @pytest.mark.parametrize("body", [b"[]", b"[{}]", b"null", b"42", b'"text"', b"true"])
    def test_not_an_object(self, body: bytes) -> None:
        """JSON that isn't an object is invalid_event."""
        error = refusal(body)
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "body must be a JSON object"

    def test_empty_object(self) -> None:
        """An empty object is an invalid event that names a missing field."""
        error = refusal(b"{}")
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("task_id: Field required")

    def test_detail_counts_further_errors(self) -> None:
        """The detail names the first bad field and says how many more there are."""
        error = refusal(encode({"content": ""}))
        assert error.detail == "task_id: Field required (and 2 more)"


class TestEventModel:
    """The Event model as a schema: frozen, tolerant of extra fields."""

    def test_extra_fields_dropped(self) -> None:
        """Unknown fields are neither refused nor kept."""
        model = Event.model_validate(event(extra="x"))
        assert "extra" not in model.model_dump()
        assert model.task_id == TASK_ID

    def test_string_metadata_becomes_object(self) -> None:
        """The model turns the seed's string metadata into a dict."""
        model = Event.model_validate(event(metadata='{"a": 1}'))
        assert model.metadata == {"a": 1}

    def test_context_type_is_enum(self) -> None:
        """The context_type is parsed to the ContextType enum."""
        assert Event.model_validate(event()).context_type is ContextType.AGENT_TURN

    def test_frozen(self) -> None:
        """An event can't be changed after validation."""
        model = Event.model_validate(event())
        with pytest.raises(ValidationError, match=r"frozen"):
            model.content = "changed"  # type: ignore[misc]


class TestRetention:
    """An entry that would be expired on arrival is refused with `expired`."""

    def test_expired_exactly_at_boundary(self) -> None:
        """An entry whose created_at plus retention equals now is expired."""
        now = RECEIVED_AT
        error = retention_error(now - timedelta(days=20), retention=timedelta(days=20), now=now)
        assert error is not None
        assert error.code is ErrorCode.EXPIRED
        assert error.detail.startswith("created_at: ")
        assert "20 days" in error.detail

    def test_expired_long_ago(self) -> None:
        """An entry far older than the retention is expired."""
        now = RECEIVED_AT
        with pytest.raises(InvalidEventError, match=r"^expired: created_at: .* older than"):
            check_retention(entry(now - timedelta(days=400)), retention=timedelta(days=20), now=now)

    def test_just_inside_retention(self) -> None:
        """An entry a microsecond younger than the retention is kept."""
        now = RECEIVED_AT
        created_at = now - timedelta(days=20) + timedelta(microseconds=1)
        assert retention_error(created_at, retention=timedelta(days=20), now=now) is None

    @pytest.mark.parametrize(
        "age", [timedelta(0), timedelta(hours=1), timedelta(days=19), -timedelta(minutes=4)]
    )
    def test_recent_and_future(self, age: timedelta) -> None:
        """A fresh entry, or one slightly ahead of now, is kept."""
        now = RECEIVED_AT
        assert retention_error(now - age, retention=timedelta(days=20), now=now) is None

    def test_other_offsets(self) -> None:
        """Instants are compared, whatever offsets created_at and now carry."""
        now = RECEIVED_AT.astimezone(timezone(timedelta(hours=-5)))
        created_at = (RECEIVED_AT - timedelta(days=1)).astimezone(timezone(timedelta(hours=9)))
        error = retention_error(created_at, retention=timedelta(days=1), now=now)
        assert error is not None
        assert error.code is ErrorCode.EXPIRED
