"""The event agents publish (contract §1), and its validation: bytes in, a row or a reason out."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from consumer.entries import ContextType, NewEntry
from consumer.errors import ErrorCode, InvalidEventError

MAX_BODY_BYTES = 1 << 20
MAX_CONTENT_CHARS = 65_536
MAX_METADATA_BYTES = 65_536
MAX_CLOCK_SKEW = timedelta(minutes=5)

# An escaped NUL in JSON text: \u0000 preceded by an even number of backslashes.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# RFC 3339 date-time; pydantic alone would also take "1735633800" as seconds since 1970.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


class Event(BaseModel):
    """One event as published: the JSON body of a message to the history exchange."""

    # Unknown fields are ignored so that a newer publisher never breaks an older consumer.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: uuid.UUID | None = Field(
        default=None,
        description="Idempotency key. Absent: the AMQP message_id if it is a UUID, else new.",
    )
    task_id: uuid.UUID = Field(description="The task this entry belongs to; must exist.")
    workspace_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    context_type: ContextType
    content: Annotated[str, Field(min_length=1, max_length=MAX_CONTENT_CHARS)]
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="A JSON object, or a string holding one (the original form), or null.",
    )
    created_at: AwareDatetime | None = Field(
        default=None,
        description="RFC 3339 with an offset. Absent: when the consumer received the event.",
    )

    @field_validator("content")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @field_validator("created_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # A string in RFC 3339 form only: never a number, nor digits read as seconds since 1970.
        if value is not None and not (isinstance(value, str) and _RFC3339.fullmatch(value)):
            raise ValueError(
                "must be an RFC 3339 timestamp with an offset, like 2026-11-26T10:15:00Z"
            )
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_string(cls, value: object) -> object:
        # Metadata was first published as a string holding JSON; that form keeps working.
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
                raise ValueError("is a string that does not hold JSON") from None
            if not isinstance(value, dict):
                # pydantic reports ValueError (not TypeError) raised here as a validation error
                raise ValueError("is a string that does not hold a JSON object")  # noqa: TRY004
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


def _metadata_text(metadata: dict[str, Any] | None) -> str | None:
    if metadata is None:
        return None
    try:
        text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise InvalidEventError(
            ErrorCode.INVALID_EVENT, "metadata: NaN and Infinity are not JSON numbers"
        ) from None
    if _ESCAPED_NUL.search(text):
        raise InvalidEventError(ErrorCode.INVALID_EVENT, "metadata: contains a NUL character")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, from \ud800 inside the string form
        raise InvalidEventError(
            ErrorCode.INVALID_EVENT, "metadata: contains an unpaired UTF-16 surrogate"
        ) from None
    if size > MAX_METADATA_BYTES:
        raise InvalidEventError(
            ErrorCode.INVALID_EVENT,
            f"metadata: {size} bytes serialized, over the {MAX_METADATA_BYTES}-byte limit",
        )
    return text


def _event_id(event: Event, message_id: str | None) -> uuid.UUID:
    if event.id is not None:
        return event.id
    if message_id:
        try:
            return uuid.UUID(message_id)
        except ValueError:
            pass
    return uuid.uuid4()


def parse_event(body: bytes, *, message_id: str | None, received_at: datetime) -> NewEntry:
    """Validate a message body and turn it into a row; raise InvalidEventError with the reason.

    `message_id` (the AMQP property) supplies the id when the body has none; `received_at`
    supplies created_at, and is the clock that far-future timestamps are judged by.
    """
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEventError(
            ErrorCode.TOO_LARGE, f"body is {len(body)} bytes, over the {MAX_BODY_BYTES}-byte limit"
        )
    try:
        event = Event.model_validate_json(body)
    except ValidationError as exc:
        raise _first_error(exc) from None
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
        metadata=_metadata_text(event.metadata),
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
