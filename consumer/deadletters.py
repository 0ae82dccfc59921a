"""Dead letters as operators see them: why each failed, which to pick, what a replay sends."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload
from uuid import UUID

from consumer.broker.headers import (
    BROKER_HEADERS,
    ERROR,
    ERROR_DETAIL,
    FAILED_AT,
    REPLAY_COUNT,
    RETRY_COUNT,
    WAITING_SINCE,
    MessageLike,
    header_text,
    header_time,
    original_routing_key,
)
from consumer.errors import ErrorCode
from consumer.rules import (
    MAX_BODY_BYTES,
)

# What the broker's own x-death reasons mean, as x-error codes. `expired` is taken (an event
# older than the retention), so a message whose TTL ran out in a queue is `ttl_expired`.
BROKER_REASONS = {
    "delivery_limit": ErrorCode.DELIVERY_LIMIT.value,
    "rejected": "rejected",
    "expired": "ttl_expired",
    "maxlen": "queue_full",
}
UNKNOWN_CODE = "unknown"
# Every code a dead letter can carry: the consumer's, the broker's, and `unknown`.
ERROR_CODES = tuple(
    sorted({*(code.value for code in ErrorCode), *BROKER_REASONS.values(), UNKNOWN_CODE})
)

# Headers a replayed copy leaves behind: the failure they describe is over, and an unknown-task
# event gets a fresh retry window (with the old one it would fail again at once).
_CLEARED_ON_REPLAY = frozenset({ERROR, ERROR_DETAIL, FAILED_AT, WAITING_SINCE, RETRY_COUNT})


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message: what it was and why it failed."""

    message_id: str | None
    task_id: str | None
    routing_key: str
    code: str
    detail: str
    failed_at: datetime | None
    replay_count: int
    headers: Mapping[str, Any]
    properties: Mapping[str, Any]
    body: bytes
    # Its row's number in the dead-letter table; None until stored.
    id: int | None = None

    @property
    def key(self) -> bytes:
        """What identifies this message, however often it was delivered: a SHA-256.

        Of its message_id, first routing key, replay count and body: two deliveries of one
        message have the same key, whatever they failed of; a replayed copy has another.
        """
        digest = hashlib.sha256()
        for part in (self.message_id or "", self.routing_key, str(self.replay_count)):
            encoded = part.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "big") + encoded)
        digest.update(self.body)
        return digest.digest()

    def summary(self) -> dict[str, Any]:
        """The fields `dlq list` shows, JSON-ready."""
        return {
            "id": self.id,
            "message_id": self.message_id,
            "task_id": self.task_id,
            "routing_key": self.routing_key,
            "error": self.code,
            "detail": self.detail,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "replay_count": self.replay_count,
        }


def dead_letter_of(
    message: MessageLike,
    *,
    code: str,
    detail: str,
    failed_at: datetime,
    task_id: UUID | None = None,
) -> DeadLetter:
    """The dead letter of a message the consumer refused, as it was received.

    `task_id` is the event's, when validation got that far; else it is read from the body.
    """
    headers = dict(message.headers or {})
    return DeadLetter(
        message_id=message.message_id,
        task_id=str(task_id) if task_id is not None else _task_of(message.body),
        routing_key=original_routing_key(message),
        code=code,
        detail=" ".join(detail.split())[:1000],  # one line, of a readable length
        failed_at=failed_at,
        replay_count=replay_count(headers),
        headers=headers,
        properties=_properties(message),
        body=message.body,
    )


def read_dead_letter(message: MessageLike) -> DeadLetter:
    """What a message in the dead-letter queue says about itself, from its headers and body.

    Copies published by an earlier consumer or another tool carry x-error and friends; a
    message the broker dead-lettered itself (a poison message past the delivery limit) carries
    only x-death, read instead. Nothing here can fail on a malformed body or header.
    """
    headers = dict(message.headers or {})
    code = header_text(headers.get(ERROR))
    detail = header_text(headers.get(ERROR_DETAIL))
    failed_at = header_time(message, FAILED_AT)
    if not code:
        code, detail, failed_at = _from_x_death(headers.get("x-death"))
    return DeadLetter(
        message_id=message.message_id,
        task_id=_task_of(message.body),
        routing_key=original_routing_key(message) or _x_death_routing_key(headers),
        code=code,
        detail=detail,
        failed_at=failed_at,
        replay_count=replay_count(headers),
        headers=headers,
        properties=_properties(message),
        body=message.body,
    )


# The AMQP properties a dead letter keeps (those a message read from a queue may have).
_PROPERTIES = (
    "exchange",
    "routing_key",
    "message_id",
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "timestamp",
    "type",
    "app_id",
    "user_id",
)


def _properties(message: MessageLike) -> dict[str, Any]:
    """The message's AMQP properties that are set, as `dlq show` prints them."""
    properties = {name: getattr(message, name, None) for name in _PROPERTIES}
    if properties["delivery_mode"] is not None:
        properties["delivery_mode"] = int(properties["delivery_mode"])
    return {name: value for name, value in properties.items() if value not in (None, "")}


def jsonable(value: object) -> object:
    """A header or property value in a form json.dumps takes: times as RFC 3339, bytes as text."""
    converted: object
    if isinstance(value, Mapping):
        converted = {str(jsonable(str(key))): jsonable(item) for key, item in value.items()}
    elif isinstance(value, list | tuple):
        converted = [jsonable(item) for item in value]
    elif isinstance(value, datetime):
        converted = value.isoformat()
    elif isinstance(value, bytes):
        converted = jsonable(value.decode("utf-8", "replace"))
    elif isinstance(value, str):
        converted = _text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        converted = str(value)  # JSON has no NaN or infinity
    elif value is None or isinstance(value, int | float | bool):
        converted = value
    else:
        converted = str(value)  # Decimal and the like
    return converted


def shown(letter: DeadLetter) -> dict[str, Any]:
    """The whole message, JSON-ready: properties, headers, and the body (parsed if JSON)."""
    try:
        body: object = json.loads(letter.body)
    except (ValueError, RecursionError):
        body = letter.body.decode("utf-8", "replace")
    return {
        **letter.summary(),
        "properties": jsonable(letter.properties),
        "headers": jsonable(letter.headers),
        "body": body,
    }


def _first_death(x_death: object) -> Mapping[str, Any] | None:
    """The newest entry of an x-death header (the broker puts it first)."""
    if isinstance(x_death, list | tuple) and x_death and isinstance(x_death[0], Mapping):
        return x_death[0]
    return None


def _from_x_death(x_death: object) -> tuple[str, str, datetime | None]:
    death = _first_death(x_death)
    if death is None:
        return UNKNOWN_CODE, "no x-error or x-death header: not dead-lettered by this system", None
    reason = header_text(death.get("reason"))
    queue = header_text(death.get("queue"))
    when = death.get("time")
    failed_at = when if isinstance(when, datetime) else None
    if reason == "delivery_limit":
        detail = (
            f"the broker dead-lettered it from {queue}: delivered too many times without an ack"
            " (it crashed or stalled the consumer each time)"
        )
    else:
        detail = f"the broker dead-lettered it from {queue} (reason: {reason or 'not given'})"
    return BROKER_REASONS.get(reason, reason or UNKNOWN_CODE), detail, failed_at


def _x_death_routing_key(headers: Mapping[str, Any]) -> str:
    death = _first_death(headers.get("x-death"))
    keys = death.get("routing-keys") if death is not None else None
    return header_text(keys[0]) if isinstance(keys, list | tuple) and keys else ""


def _task_of(body: bytes) -> str | None:
    """The body's task_id, if the body is a JSON object that has one (valid or not)."""
    if len(body) > MAX_BODY_BYTES:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return None
    task = parsed.get("task_id") if isinstance(parsed, dict) else None
    return task if isinstance(task, str) else None


def replay_count(headers: Mapping[str, Any]) -> int:
    """How many times a message was replayed; a malformed count reads as 0."""
    try:
        return max(0, int(headers.get(REPLAY_COUNT) or 0))
    except (TypeError, ValueError):
        return 0


def replay_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers a replayed copy carries: the failure's cleared, the replay counted."""
    kept = {
        name: value
        for name, value in headers.items()
        if name not in _CLEARED_ON_REPLAY and name not in BROKER_HEADERS
    }
    kept[REPLAY_COUNT] = replay_count(headers) + 1
    return kept


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command works on; empty, it selects every one.

    The store turns it into SQL: any of `errors`, the body's `task_id`, a failure time in
    [`failed_after`, `failed_before`), the first `routing_key`, `text` found in the detail or
    the message id (in any case), any of the row `ids`, and ids up to `through` (the newest
    letter an operator was shown, so that what arrives meanwhile is left alone).
    """

    errors: frozenset[str] = frozenset()
    task_id: UUID | None = None
    failed_before: datetime | None = None
    failed_after: datetime | None = None
    routing_key: str | None = None
    text: str | None = None
    ids: frozenset[int] = frozenset()
    through: int | None = None

    @property
    def is_everything(self) -> bool:
        """Whether no filter is set (`through` alone still selects every letter shown)."""
        return not (
            self.errors
            or self.task_id
            or self.failed_before
            or self.failed_after
            or self.routing_key is not None
            or self.text
            or self.ids
        )

    def describe(self) -> str:
        """The filters in words, for prompts and summaries."""
        parts = []
        if self.ids:
            shown = ", ".join(f"#{n}" for n in sorted(self.ids)[:5])
            parts.append(f"id {shown}{' and more' if len(self.ids) > 5 else ''}")  # noqa: PLR2004
        if self.errors:
            parts.append("error " + " or ".join(sorted(self.errors)))
        if self.task_id is not None:
            parts.append(f"task {self.task_id}")
        if self.routing_key is not None:
            parts.append(f"routing key {self.routing_key}")
        if self.text:
            parts.append(f"detail holding {self.text!r}")
        if self.failed_after is not None:
            parts.append(f"failed at or after {self.failed_after.isoformat(timespec='seconds')}")
        if self.failed_before is not None:
            parts.append(f"failed before {self.failed_before.isoformat(timespec='seconds')}")
        return ", ".join(parts) or "every dead letter"

    def to_json(self) -> dict[str, Any]:
        """The filters set, JSON-ready, named as the HTTP API names them (for the record)."""
        given: dict[str, Any] = {
            "ids": sorted(self.ids) or None,
            "error": sorted(self.errors) or None,
            "task": None if self.task_id is None else str(self.task_id),
            "routing_key": self.routing_key,
            "q": self.text or None,
            "since": None if self.failed_after is None else self.failed_after.isoformat(),
            "until": None if self.failed_before is None else self.failed_before.isoformat(),
            "through": self.through,
        }
        return {name: value for name, value in given.items() if value is not None}


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """The dead letters of one error code: how many, and the tasks with the most."""

    error: str
    count: int
    # (task id or None for letters naming no task, how many), largest first.
    tasks: tuple[tuple[str | None, int], ...]


@dataclass(frozen=True, slots=True)
class Census:
    """What `dlq list` shows, counted by the database: the total, each code, the newest few."""

    total: int
    groups: tuple[ErrorGroup, ...]
    newest: tuple[DeadLetter, ...]

    def to_json(self) -> dict[str, Any]:
        """The census as a JSON-ready dict (what `dlq list --json` prints)."""
        return {
            "total": self.total,
            "by_error": [
                {
                    "error": group.error,
                    "count": group.count,
                    "tasks": [{"task_id": task, "count": n} for task, n in group.tasks],
                }
                for group in self.groups
            ],
            "newest": [letter.summary() for letter in self.newest],
        }


def exported(letter: DeadLetter) -> dict[str, Any]:
    """One line of `dlq export`, JSON-ready: the summary, the body as text or base64, the rest.

    The body is `body` when it is valid UTF-8 (byte for byte what was received), else
    `body_base64`.
    """
    try:
        body = {"body": letter.body.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"body_base64": base64.b64encode(letter.body).decode("ascii")}
    return {
        **letter.summary(),
        **body,
        "properties": jsonable(letter.properties),
        "headers": jsonable(letter.headers),
    }


def dead_letter_columns(letters: Sequence[DeadLetter]) -> tuple[list[Any], ...]:
    """The letters as the dead-letter table's columns, one list each, for one INSERT.

    Text loses any NUL character (PostgreSQL's text holds none), a task id that is not a UUID
    is left out, headers and properties become JSON text, and each gets its key.
    """
    return (
        [_text(letter.message_id) for letter in letters],
        [_text(letter.code) for letter in letters],
        [_text(letter.detail) for letter in letters],
        [_text(letter.routing_key) for letter in letters],
        [_uuid(letter.task_id) for letter in letters],
        [letter.failed_at or datetime.now(UTC) for letter in letters],
        [letter.replay_count for letter in letters],
        [letter.body for letter in letters],
        [json.dumps(jsonable(letter.properties)) for letter in letters],
        [json.dumps(jsonable(letter.headers)) for letter in letters],
        [letter.key for letter in letters],
    )


@overload
def _text(value: str) -> str: ...
@overload
def _text(value: None) -> None: ...
def _text(value: str | None) -> str | None:
    # PostgreSQL's jsonb and text hold no NUL character: it is shown as U+FFFD.
    return None if value is None else value.replace("\x00", "\ufffd")


def _uuid(value: str | None) -> UUID | None:
    try:
        return None if value is None else UUID(value)
    except ValueError:
        return None
