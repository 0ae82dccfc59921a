"""The event agents publish (contract §1), and its validation: bytes in, a row or a reason out.

The rules themselves, and the patterns the published schema repeats, are `consumer.rules`.
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

if sys.version_info >= (3, 14):
    from uuid import uuid7
else:
    from uuid6 import uuid7

from consumer.entries import ContextType, NewEntry
from consumer.errors import ErrorCode, InvalidEventError
from consumer.rules import (
    CREATED_AT_PATTERN,
    CREATED_AT_TEXT,
    MAX_BODY_BYTES,
    MAX_CLOCK_SKEW,
    MAX_CONTENT_CHARS,
    MAX_FIELD_DEPTH,
    MAX_METADATA_DEPTH,
    TEXT_PATTERN,
    UUID_PATTERN,
    UUID_TEXT,
    loads_json,
    metadata_json,
    text_nesting,
    text_problem,
    too_deep,
)

# The key a parse passes in pydantic's validation context to get the metadata text back.
_METADATA_TEXT = "metadata_json"


def _storable_metadata(value: object, info: ValidationInfo) -> object:
    """Metadata checked, the original string form read as the object it holds and checked alike.

    This runs before pydantic's own check, which refuses a lone surrogate in a key without
    saying so. The text to store is left in the validation context, when there is one, so a
    parse serializes metadata once.
    """
    if isinstance(value, str):
        value = _metadata_from_text(value)
    if isinstance(value, dict):
        text = metadata_json(value)
        if isinstance(info.context, dict):
            info.context[_METADATA_TEXT] = text
    return value


def _metadata_from_text(value: str) -> object:
    """The original string form of metadata, read as the object it holds."""
    if value.count("{") + value.count("[") > MAX_METADATA_DEPTH:
        depth, _ = text_nesting(value)
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(too_deep(depth))
    try:
        held = loads_json(value)
    except (ValueError, RecursionError):
        raise ValueError("is a string that does not hold JSON") from None
    if not isinstance(held, dict):
        # pydantic reports ValueError (not TypeError) raised here as a validation error
        raise ValueError("is a string that does not hold a JSON object")  # noqa: TRY004
    return held


def _canonical_uuid(value: object) -> object:
    """A UUID given as text must be in the 8-4-4-4-12 form; pydantic parses it afterwards."""
    if isinstance(value, str) and not UUID_TEXT.search(value):
        raise ValueError(
            "must be a UUID as 8-4-4-4-12 hex digits, like 0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10"
        )
    return value


Uuid = Annotated[
    uuid.UUID,
    BeforeValidator(_canonical_uuid),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN}),
]
Metadata = Annotated[dict[str, Any], BeforeValidator(_storable_metadata)]
# No `format: date-time`: Python's jsonschema checks it with rfc3339-validator, which refuses
# the space between date and time that pydantic, Python's str(datetime) and ajv accept.
CreatedAt = Annotated[
    AwareDatetime, WithJsonSchema({"type": "string", "pattern": CREATED_AT_PATTERN})
]


class Event(BaseModel):
    """One event as published: the JSON body of a message to the history exchange."""

    # Unknown fields are ignored so that a newer publisher never breaks an older consumer.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Uuid | None = Field(
        default=None,
        description="Idempotency key. Absent: the AMQP message_id if it is a UUID, else new.",
    )
    task_id: Uuid = Field(description="The task this entry belongs to; must exist.")
    workspace_id: Uuid | None = None
    session_id: Uuid | None = None
    context_type: ContextType
    content: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_CONTENT_CHARS,
            json_schema_extra={"pattern": TEXT_PATTERN},
        ),
    ]
    metadata: Metadata | None = Field(
        default=None,
        description="A JSON object, or a string holding one (the original form), or null.",
    )
    created_at: CreatedAt | None = Field(
        default=None,
        description="RFC 3339 with an offset. Absent: when the consumer received the event.",
    )

    @field_validator("content", mode="before")
    @classmethod
    def _storable_text(cls, value: object) -> object:
        # Before pydantic's own check, which refuses a lone surrogate without saying so.
        if isinstance(value, str) and (problem := text_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("created_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # A string in RFC 3339 form only: never a number, nor digits read as seconds since 1970.
        if value is not None and not (isinstance(value, str) and CREATED_AT_TEXT.search(value)):
            raise ValueError(
                "must be an RFC 3339 timestamp with an offset, like 2026-11-26T10:15:00Z"
            )
        return value


def _first_error(exc: ValidationError) -> InvalidEventError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return InvalidEventError(ErrorCode.INVALID_JSON, f"body is not valid JSON: {first['msg']}")
    if first["type"] == "model_type":
        return InvalidEventError(ErrorCode.INVALID_EVENT, "body must be a JSON object")
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidEventError(ErrorCode.INVALID_EVENT, f"{where}: {message}{more}")


def _reread(body: bytes, problem: str, context: dict[str, str]) -> Event:
    r"""An event pydantic's JSON parser refused (`problem`), read by Python's instead.

    That parser refuses three things JSON allows: an escaped unpaired surrogate (such as the
    "\ud83d" JavaScript writes for half an emoji), nesting beyond its recursion limit, and
    integers of over 4,300 digits. Each is then an invalid event (not invalid JSON) when it is
    in a field the consumer reads, and no matter in a field it ignores. Anything else that
    parser refuses is not JSON, and Python's parser says so too.
    """
    not_json = InvalidEventError(ErrorCode.INVALID_JSON, f"body is not valid JSON: {problem}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise not_json from None
    deepest, fields = text_nesting(text)
    for name, depth in fields.items():
        if depth > MAX_FIELD_DEPTH:
            limit = MAX_METADATA_DEPTH if name == "metadata" else MAX_FIELD_DEPTH
            detail = f"{name}: nested {depth} levels deep, over the {limit}-level limit"
            raise InvalidEventError(ErrorCode.INVALID_EVENT, detail)
    if deepest > MAX_FIELD_DEPTH + 1:  # not an object with fields: an array, say
        raise InvalidEventError(ErrorCode.INVALID_EVENT, "body must be a JSON object")
    try:
        data = loads_json(text)
    except (ValueError, RecursionError):
        raise not_json from None
    try:
        return Event.model_validate(data, context=context)
    except ValidationError as exc:
        raise _first_error(exc) from None


def _stored_metadata(event: Event, context: dict[str, str]) -> str | None:
    """The metadata text to store: what validation left in the context, serialized once."""
    if event.metadata is None:
        return None
    if _METADATA_TEXT in context:
        return context[_METADATA_TEXT]
    return metadata_json(event.metadata)


def new_event_id() -> uuid.UUID:
    """A new event id: a UUIDv7 (RFC 9562), time first, then random.

    Ids made one after another then land side by side in the history's index of ids, on a few
    pages kept in memory; random ids (version 4) land anywhere in it, and once it outgrows
    the database's buffers most of a batch's inserts read a page first (docs/scaling.md).
    """
    return uuid.UUID(int=uuid7().int)  # a plain UUID, not the back-port's subclass


def _event_id(event: Event, message_id: str | None) -> uuid.UUID:
    if event.id is not None:
        return event.id
    if message_id:
        try:
            return uuid.UUID(message_id)
        except ValueError:
            pass
    return new_event_id()


def parse_event(body: bytes, *, message_id: str | None, received_at: datetime) -> NewEntry:
    """Validate a message body and turn it into a row; raise InvalidEventError with the reason.

    `message_id` (the AMQP property) supplies the id when the body has none; `received_at`
    supplies created_at, and is the clock that far-future timestamps are judged by.
    """
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEventError(
            ErrorCode.TOO_LARGE, f"body is {len(body)} bytes, over the {MAX_BODY_BYTES}-byte limit"
        )
    context: dict[str, str] = {}
    try:
        event = Event.model_validate_json(body, context=context)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] != "json_invalid":
            raise _first_error(exc) from None
        event = _reread(body, first["msg"], context)
    created_at = event.created_at or received_at
    if created_at - received_at > MAX_CLOCK_SKEW:
        raise InvalidEventError(
            ErrorCode.INVALID_EVENT,
            f"created_at: {created_at.isoformat()} is more than 5 minutes in the future",
        )
    return NewEntry(
        id=_event_id(event, message_id),
        task_id=event.task_id,
        workspace_id=event.workspace_id,
        session_id=event.session_id,
        context_type=event.context_type.value,
        content=event.content,
        metadata=_stored_metadata(event, context),
        created_at=created_at,
    )


def check_retention(entry: NewEntry, *, retention: timedelta, now: datetime) -> None:
    """Raise InvalidEventError (`expired`) for an entry that would be expired on arrival."""
    if entry.created_at + retention <= now:
        raise InvalidEventError(
            ErrorCode.EXPIRED,
            f"created_at: {entry.created_at.isoformat()} is older than the retention of"
            f" {retention.days} days",
        )
