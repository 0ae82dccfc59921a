"""The event rules of contract section 1: what parse_event accepts, refuses, and why."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from consumer.entries import ContextType, NewEntry
from consumer.errors import ErrorCode, InvalidEventError, TaskHistoryError
from consumer.events import Event, check_retention, parse_event
from consumer.rules import (
    CREATED_AT_PATTERN,
    MAX_BODY_BYTES,
    MAX_FIELD_DEPTH,
    MAX_METADATA_DEPTH,
    MAX_NUMBER,
    json_depth,
)

NUMBER_RANGE = "holds NaN, Infinity or a number beyond ±1.7976931348623157e+308"

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


CREATED_AT = re.compile(CREATED_AT_PATTERN)
_AWARE = TypeAdapter(AwareDatetime)


def pydantic_reads(text: str) -> bool:
    """Whether pydantic alone reads `text` as an aware datetime."""
    try:
        _AWARE.validate_json(json.dumps(text))
    except ValidationError:
        return False
    return True


DIGIT = st.sampled_from("0123456789")


def digits(count: int) -> st.SearchStrategy[str]:
    """`count` random ASCII digits."""
    return st.lists(DIGIT, min_size=count, max_size=count).map("".join)


# Each part of a timestamp: values inside its range, and values at or past its edges.
PARTS: dict[str, tuple[range, tuple[str, ...]]] = {
    "month": (range(1, 13), ("00", "13", "19", "99")),
    "day": (range(1, 32), ("00", "29", "30", "31", "32", "39")),
    "hour": (range(24), ("24", "29", "99")),
    "minute": (range(60), ("60", "99")),
    "second": (range(60), ("60", "61", "99")),
}
# Month ends, where the calendar and leap years matter.
MONTH_ENDS = [(f"{month:02}", day) for month in range(1, 13) for day in ("28", "29", "30", "31")]
YEARS = ("0000", "0001", "0004", "0100", "0400", "1600", "1900", "2000", "2023", "2024", "9999")


@st.composite
def rfc3339_like(draw: st.DrawFn, offsets: st.SearchStrategy[str]) -> str:
    """Text shaped like an RFC 3339 timestamp: valid parts, often one or two at or past an edge."""
    edgy = set(draw(st.lists(st.sampled_from(sorted(PARTS)), max_size=2)))
    values = {
        name: draw(
            st.sampled_from(edges) if name in edgy else st.sampled_from(valid).map("{:02}".format)
        )
        for name, (valid, edges) in PARTS.items()
    }
    if draw(st.booleans()):
        values["month"], values["day"] = draw(
            st.one_of(st.just(("02", "29")), st.sampled_from(MONTH_ENDS))
        )
    year = draw(st.one_of(st.sampled_from(YEARS), digits(4)))
    fraction = draw(st.one_of(st.just(""), st.integers(1, 12).flatmap(digits).map(".{}".format)))
    separator = draw(st.sampled_from(["T", "t", " "]))
    return (
        f"{year}-{values['month']}-{values['day']}{separator}{values['hour']}:{values['minute']}"
        f":{values['second']}{fraction}{draw(offsets)}"
    )


# Offsets as RFC 3339 writes them: Z, z, or a sign and HH:MM (the digits possibly out of range).
RFC3339_OFFSETS = st.one_of(
    st.sampled_from(["Z", "z"]),
    st.builds(
        "{}{:02}:{:02}".format,
        st.sampled_from("+-"),
        st.one_of(st.integers(0, 23), st.integers(24, 99)),
        st.one_of(st.integers(0, 59), st.integers(60, 99)),
    ),
)
# Offsets pydantic takes too, which the pattern refuses: RFC 3339 does not allow them.
OTHER_OFFSETS = st.sampled_from(["+0000", "-0530", "+00", "-05", "", "+00:00:00", "UTC"])


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
            "invalid_properties",
            "internal_error",
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
        """Without a body id or a UUID message_id, each parse makes a fresh, later UUIDv7."""
        body = encode(event())
        first = parse(body, message_id=message_id).id
        second = parse(body, message_id=message_id).id
        assert type(first) is uuid.UUID
        assert first.version == 7
        assert first < second

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


class TestUuidForm:
    """UUIDs in the body are 8-4-4-4-12 hex digits, either case; other spellings are refused."""

    @pytest.mark.parametrize("field", ["id", "task_id", "workspace_id", "session_id"])
    @pytest.mark.parametrize(
        "text",
        [
            "0B6F1C1E-3C1A-4D57-9A0E-2F4C8E1D7A10",
            "0b6F1c1E-3c1a-4D57-9a0e-2f4C8e1d7A10",
            "00000000-0000-0000-0000-000000000000",
            "0b6f1c1e-3c1a-0d57-ca0e-2f4c8e1d7a10",  # any version and variant
        ],
    )
    def test_canonical_accepted(self, field: str, text: str) -> None:
        """Upper, lower or mixed case, any version: the same UUID."""
        row = parse(encode(event(**{field: text})))
        assert getattr(row, field) == uuid.UUID(text)

    @pytest.mark.parametrize("field", ["id", "task_id", "workspace_id", "session_id"])
    @pytest.mark.parametrize(
        "text",
        [
            "0b6f1c1e3c1a4d579a0e2f4c8e1d7a10",
            "{0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10}",
            "urn:uuid:0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10",
            "0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10\n",
            " 0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10",
            "0b6f1c1e-3c1a-4d57-9a0e2f4c-8e1d7a10",
            "0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a1g",
            "0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a1",
            "0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10\x00",
            "\uff10b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10",
        ],
    )
    def test_other_spellings_refused(self, field: str, text: str) -> None:
        """Without hyphens, braced, urn:, padded or misplaced: refused, naming the field."""
        error = refusal(json.dumps(event(**{field: text})).encode())
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith(f"{field}: must be a UUID as 8-4-4-4-12 hex digits")

    def test_python_uuid_objects(self) -> None:
        """The model, given Python objects, still takes uuid.UUID values."""
        assert Event.model_validate(event(task_id=TASK_ID)).task_id == TASK_ID


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
        """The original string form is stored as the object it holds, not as a string."""
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

    @pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1.8e308"])
    def test_nan_infinity_and_too_large(self, number: bytes) -> None:
        """NaN, the infinities and numbers a double can't hold are refused."""
        body = b'{"task_id": "%s", "context_type": "error", "content": "x", "metadata": {"n": %s}}'
        error = refusal(body % (str(TASK_ID).encode(), number))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == f"metadata: {NUMBER_RANGE}"

    def test_nan_in_string_form(self) -> None:
        """NaN inside the string form is refused as well."""
        error = refusal(encode(event(metadata='{"n": NaN}')))
        assert error.detail == f"metadata: {NUMBER_RANGE}"

    @pytest.mark.parametrize("sign", [1, -1])
    def test_integer_too_large_for_a_double(self, sign: int) -> None:
        """An integer beyond the largest double is refused, exactly, as JSON Schema's maximum."""
        at_limit = int(MAX_NUMBER)
        assert parse(encode(event(metadata={"n": sign * at_limit}))).metadata is not None
        error = refusal(encode(event(metadata={"n": [sign * (at_limit + 1)]})))
        assert error.detail == f"metadata: {NUMBER_RANGE}"

    def test_long_digit_strings_are_text(self) -> None:
        """A string of many digits is not a number."""
        metadata = {"digits": "9" * 400, "n": 10**300}
        row = parse(encode(event(metadata=metadata)))
        assert row.metadata is not None
        assert json.loads(row.metadata) == metadata

    def test_largest_double(self) -> None:
        """The largest double itself is accepted."""
        row = parse(encode(event(metadata={"n": MAX_NUMBER, "m": -MAX_NUMBER})))
        assert row.metadata is not None
        assert json.loads(row.metadata) == {"n": MAX_NUMBER, "m": -MAX_NUMBER}


class TestMetadataStringForm:
    """The original string form holds a JSON object, and what it holds follows the same rules."""

    @pytest.mark.parametrize(
        "text",
        ['{"a": 1}', ' {"a": 1} ', "\t\r\n{}\n", '{"a": "\\u00e9\\uD83D\\uDE00"}', "{}"],
    )
    def test_json_object_accepted(self, text: str) -> None:
        """JSON whitespace around the object, and escapes inside it, are fine."""
        row = parse(encode(event(metadata=text)))
        assert row.metadata is not None
        assert json.loads(row.metadata) == json.loads(text)

    @pytest.mark.parametrize(
        "text", ["exit 0", "", " ", "{", "{} {}", "\f{}", "\u00a0{}", "{'a': 1}"]
    )
    def test_not_json_refused(self, text: str) -> None:
        """Text that isn't JSON, or has more than one value, or other whitespace, is refused."""
        error = refusal(encode(event(metadata=text)))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "metadata: is a string that does not hold JSON"

    @pytest.mark.parametrize("text", ["[1]", "[]", "1", '"{}"', "null", "true"])
    def test_json_but_not_an_object_refused(self, text: str) -> None:
        """JSON that isn't an object is refused."""
        error = refusal(encode(event(metadata=text)))
        assert error.detail == "metadata: is a string that does not hold a JSON object"

    @pytest.mark.parametrize(
        "text", ['{"a": "\\u0000"}', '{"\\u0000": 1}', '{"a": ["\\\\\\u0000"]}']
    )
    def test_escaped_nul_refused(self, text: str) -> None:
        """An escaped NUL (after an even number of backslashes) is refused."""
        assert refusal(encode(event(metadata=text))).detail == "metadata: contains a NUL character"


class TestHugeNumbers:
    """Integers past Python's 4,300-digit limit, which pydantic's parser refuses, are JSON."""

    HUGE = b"9" * 5_000

    def test_in_an_ignored_field(self) -> None:
        """Ignored, like anything else in an unknown field."""
        body = b'{"task_id": "%s", "context_type": "error", "content": "x", "n": -%s}'
        assert parse(body % (str(TASK_ID).encode(), self.HUGE)).content == "x"

    def test_in_metadata(self) -> None:
        """Beyond a double: refused as any such number is, not as invalid JSON."""
        body = b'{"task_id": "%s", "context_type": "error", "content": "x", "metadata": {"n": %s}}'
        error = refusal(body % (str(TASK_ID).encode(), self.HUGE))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == f"metadata: {NUMBER_RANGE}"

    def test_in_the_string_form(self) -> None:
        """The same inside the string form."""
        text = '{"n": ' + "9" * 5_000 + "}"
        assert refusal(encode(event(metadata=text))).detail == f"metadata: {NUMBER_RANGE}"


class TestUnpairedSurrogates:
    r"""Half of a surrogate pair (JavaScript's "\ud83d" when .slice cuts an emoji) is refused."""

    @pytest.mark.parametrize("escape", ["\\ud83d", "\\ude00", "a\\udbff", "\\ude00\\ud83d"])
    def test_in_content(self, escape: str) -> None:
        """In content, an escaped lone surrogate is an invalid event, not invalid JSON."""
        body = b'{"task_id": "%s", "context_type": "error", "content": "%s"}'
        error = refusal(body % (str(TASK_ID).encode(), escape.encode()))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "content: contains an unpaired UTF-16 surrogate"

    def test_javascript_slice(self) -> None:
        """The body JSON.stringify writes for "ab😀".slice(0, 3) is refused, naming content."""
        content = "ab\ud83d"  # what .slice(0, 3) leaves, as Python holds it
        body = json.dumps(event(content=content)).encode("ascii")
        assert b'"ab\\ud83d"' in body
        assert refusal(body).detail == "content: contains an unpaired UTF-16 surrogate"

    def test_pair_is_fine(self) -> None:
        """A surrogate pair escape is one character, and is kept."""
        body = json.dumps(event(content="\N{GRINNING FACE}"), ensure_ascii=True).encode()
        assert parse(body).content == "\N{GRINNING FACE}"

    @pytest.mark.parametrize(
        "metadata",
        [{"a": "\ud83d"}, {"\ude00": 1}, {"a": [{"b": ["x\udfff"]}]}, {"a": {"\ud800k": None}}],
    )
    def test_in_metadata(self, metadata: dict[str, Any]) -> None:
        """In any metadata key or string, at any depth, it is refused."""
        body = json.dumps(event(metadata=metadata)).encode("ascii")
        error = refusal(body)
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "metadata: contains an unpaired UTF-16 surrogate"

    @pytest.mark.parametrize("text", ['{"a": "\\ud83d"}', '{"a": "\\uDE00x"}', '{"a": "\ud83d"}'])
    def test_in_string_form(self, text: str) -> None:
        """In the string form, escaped or raw, it is refused."""
        body = json.dumps(event(metadata=text)).encode("ascii")
        assert refusal(body).detail == "metadata: contains an unpaired UTF-16 surrogate"

    def test_in_an_ignored_field(self) -> None:
        """In a field the consumer ignores, it does no harm: the event is stored."""
        body = json.dumps(event(note="\ud83d", more={"k": ["\ude00"]})).encode("ascii")
        assert parse(body).content == "ran the tests"

    def test_with_another_error(self) -> None:
        """The first error, by field, is reported, as for any other body."""
        body = json.dumps(event(task_id="nope", content="\ud83d")).encode("ascii")
        error = refusal(body)
        assert error.detail.startswith("task_id: ")
        assert error.detail.endswith("(and 1 more)")

    def test_model_refuses_it_too(self) -> None:
        """Validating a Python dict applies the same rule."""
        with pytest.raises(ValidationError, match="unpaired UTF-16 surrogate"):
            Event.model_validate(event(content="x\ud83d"))

    @pytest.mark.parametrize(
        "body",
        [
            b'{"content": "\\ud83"}',
            b'{"content": "\\ud83d',
            b'{"content": "\\ud83d"',
            b'{"content": "\xed\xa0\xbd"}',  # a surrogate encoded as UTF-8 is not UTF-8
        ],
    )
    def test_broken_json_is_still_invalid_json(self, body: bytes) -> None:
        """A body that is not JSON stays invalid_json, surrogate or not."""
        assert refusal(body).code is ErrorCode.INVALID_JSON


def nested(levels: int, *, leaf: object = 1) -> object:
    """Objects and arrays nested `levels` deep, alternating, around `leaf`."""
    value = leaf
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


class TestNesting:
    """Metadata nests at most 64 levels; any other field at most 200."""

    def test_limits(self) -> None:
        """The limits are the documented ones."""
        assert MAX_METADATA_DEPTH == 64
        assert MAX_FIELD_DEPTH == 200

    @pytest.mark.parametrize("string_form", [False, True])
    def test_metadata_at_the_limit(self, *, string_form: bool) -> None:
        """The metadata object and 63 levels inside it are accepted, in either form."""
        metadata = {"k": nested(63)}
        assert json_depth(metadata) == 64
        value = json.dumps(metadata) if string_form else metadata
        row = parse(encode(event(metadata=value)))
        assert row.metadata is not None
        assert json.loads(row.metadata) == metadata

    @pytest.mark.parametrize("string_form", [False, True])
    @pytest.mark.parametrize("levels", [65, 70, 199, 200, 201, 250, 900])
    def test_metadata_over_the_limit(self, levels: int, *, string_form: bool) -> None:
        """One level more is refused, in either form, however deep, naming the depth."""
        metadata = {"k": nested(levels - 1)}
        value = json.dumps(metadata) if string_form else metadata
        error = refusal(json.dumps(event(metadata=value)).encode())
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == f"metadata: nested {levels} levels deep, over the 64-level limit"

    def test_metadata_over_the_limit_as_text(self) -> None:
        """A string form nested 100,000 levels is refused without parsing it."""
        deep = "{" + '"k":[' * 49_999 + "1" + "]" * 49_999 + "}"
        error = refusal(encode(event(metadata=deep)))
        assert error.detail == "metadata: nested 50000 levels deep, over the 64-level limit"

    def test_metadata_object_too_deep_for_the_parser(self) -> None:
        """Metadata beyond the JSON parser's own limit is an invalid event, not invalid JSON."""
        body = b'{"task_id": "%s", "context_type": "error", "content": "x", "metadata": {"k": %s}}'
        inner = b"[" * 9_999 + b"]" * 9_999
        error = refusal(body % (str(TASK_ID).encode(), inner))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == "metadata: nested 10000 levels deep, over the 64-level limit"

    def test_many_brackets_but_shallow(self) -> None:
        """Many objects side by side are not deep."""
        metadata = {"files": [{"name": str(i), "tags": []} for i in range(200)], "s": "[[[[" * 40}
        row = parse(encode(event(metadata=metadata)))
        assert row.metadata is not None
        assert json.loads(row.metadata) == metadata

    def test_brackets_in_strings_do_not_count(self) -> None:
        """Brackets inside strings are text, in the string form too."""
        metadata = {"s": "{[" * 100, "t": '\\"{{{{' * 50}
        assert parse(encode(event(metadata=json.dumps(metadata)))).metadata is not None

    def test_ignored_field_at_the_limit(self) -> None:
        """An unknown field nested 200 levels is ignored, as unknown fields are."""
        assert parse(encode(event(extra=nested(200)))).content == "ran the tests"

    @pytest.mark.parametrize("levels", [201, 202, 3_000])
    def test_ignored_field_over_the_limit(self, levels: int) -> None:
        """One more level is refused as an invalid event, naming the field and its depth."""
        body = b'{"task_id": "%s", "context_type": "error", "content": "x", "deep": %s}'
        inner = b"[" * levels + b"]" * levels
        error = refusal(body % (str(TASK_ID).encode(), inner))
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail == f"deep: nested {levels} levels deep, over the 200-level limit"

    def test_deep_content(self) -> None:
        """Content that is a deep array is refused, naming content."""
        body = b'{"task_id": "%s", "context_type": "error", "content": %s}'
        error = refusal(body % (str(TASK_ID).encode(), b"[" * 300 + b"]" * 300))
        assert error.detail == "content: nested 300 levels deep, over the 200-level limit"

    def test_deep_array_body(self) -> None:
        """A body that is a deep array is not an object."""
        assert refusal(b"[" * 5_000 + b"]" * 5_000).detail == "body must be a JSON object"

    def test_json_depth(self) -> None:
        """Scalars are 0 levels, an empty object or array 1."""
        assert json_depth(1) == 0
        assert json_depth({}) == 1
        assert json_depth([[], {"a": [1]}]) == 3
        assert json_depth(nested(1_000)) == 1_000


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


class TestCreatedAtForm:
    """The one created_at pattern: what it accepts, pydantic reads; what it refuses, is refused."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-12-31 08:30:00Z", datetime(2024, 12, 31, 8, 30, tzinfo=UTC)),
            ("2024-12-31t08:30:00z", datetime(2024, 12, 31, 8, 30, tzinfo=UTC)),
            ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
            ("2000-02-29T00:00:00Z", datetime(2000, 2, 29, tzinfo=UTC)),
            ("0400-02-29T00:00:00Z", datetime(400, 2, 29, tzinfo=UTC)),
            ("0004-02-29T00:00:00Z", datetime(4, 2, 29, tzinfo=UTC)),
            ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
            ("2024-12-31T23:59:59.123456789012Z", datetime(2024, 12, 31, 23, 59, 59, 123456, UTC)),
            (
                "2024-06-30T12:00:00-23:59",
                datetime(2024, 6, 30, 12, tzinfo=timezone(-timedelta(hours=23, minutes=59))),
            ),
            ("2024-06-30T12:00:00-00:00", datetime(2024, 6, 30, 12, tzinfo=UTC)),
        ],
    )
    def test_accepted(self, text: str, expected: datetime) -> None:
        """A space or lower-case letters, real leap days, long fractions, offsets to ±23:59."""
        created_at = parse(encode(event(created_at=text))).created_at
        assert created_at == expected
        assert created_at.utcoffset() == expected.utcoffset()

    @pytest.mark.parametrize(
        "text",
        [
            "2024-12-31T08:30:00+0000",
            "2024-12-31T08:30:00+00",
            "2024-12-31T08:30:00+24:00",
            "2024-12-31T08:30:00+05:60",
            "2024-12-31T08:30:00",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-13-10T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-32T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2016-12-31T23:59:60Z",
            "2024-12-31T24:00:00Z",
            "2024-12-31T08:60:00Z",
            "2024-12-31T08:30:00.Z",
            "2024-12-31T08:30:00,5Z",
            "2024-12-31_08:30:00Z",
            "2024-12-31T08:30:00Z\n",
            "\n2024-12-31T08:30:00Z",
            "24-12-31T08:30:00Z",
            "+2024-12-31T08:30:00Z",
            "2024-12-31T08:30Z",
            "2024-12-31T8:30:00Z",
            "\u0662\u0660\u0662\u0664-12-31T08:30:00Z",
        ],
    )
    def test_refused(self, text: str) -> None:
        """+0000 and +00, impossible dates, a leap second, no offset, other separators: refused."""
        error = refusal(json.dumps(event(created_at=text)).encode())
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.detail.startswith("created_at: must be an RFC 3339 timestamp")

    @settings(max_examples=1_500, derandomize=True, database=None)
    @given(text=rfc3339_like(RFC3339_OFFSETS))
    def test_pattern_is_what_pydantic_reads(self, text: str) -> None:
        """For RFC 3339-shaped text, the pattern matches exactly when pydantic accepts it."""
        assert bool(CREATED_AT.search(text)) is pydantic_reads(text)

    @settings(max_examples=300, derandomize=True, database=None)
    @given(text=rfc3339_like(OTHER_OFFSETS))
    def test_other_offsets_refused(self, text: str) -> None:
        """Offsets RFC 3339 doesn't write (+0000, +00, none) never match, whatever pydantic says."""
        assert not CREATED_AT.search(text)

    @settings(max_examples=500, derandomize=True, database=None)
    @given(text=st.text(alphabet="0123456789-:.+ TtZz_,\n", min_size=19, max_size=40))
    def test_pattern_implies_pydantic(self, text: str) -> None:
        """Whatever the text, a match is something pydantic reads."""
        if CREATED_AT.search(text):
            assert pydantic_reads(text)

    @settings(max_examples=300, derandomize=True, database=None)
    @given(
        moment=st.datetimes(
            timezones=st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
        )
    )
    def test_python_timestamps_match(self, moment: datetime) -> None:
        """What Python writes for an aware datetime (isoformat and str) matches."""
        for text in (moment.isoformat(), str(moment), moment.isoformat(timespec="milliseconds")):
            assert CREATED_AT.search(text), text
            assert pydantic_reads(text)


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
        """The model turns the original string metadata into a dict."""
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
