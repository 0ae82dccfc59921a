"""Dead letters as operators see them: why each failed, which to pick, what a replay sends."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload
from uuid import UUID

from consumer.errors import ErrorCode
from consumer.incoming import KEPT_BODY_BYTES, Incoming
from consumer.rules import MAX_BODY_BYTES

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
# Characters of a detail kept: one readable line.
MAX_DETAIL = 1000
# Columns of a letter's row (letter_row).
_COLUMNS = 13


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
    # The body byte for byte, or its first BODY_PREFIX_BYTES when it was over KEPT_BODY_BYTES.
    body: bytes
    # Its row's number in the dead-letter table; None until stored.
    id: int | None = None
    # The whole body's length and SHA-256 when `body` is only its prefix; else None.
    body_bytes: int | None = None
    body_sha256: bytes | None = None

    @property
    def body_whole(self) -> bool:
        """Whether `body` is the whole body as received (and the letter can be replayed)."""
        return self.body_sha256 is None

    @property
    def key(self) -> bytes:
        """What identifies this message, however often it was delivered: a SHA-256.

        Of its message_id, first routing key, replay count and whole body (the SHA-256 of a
        body kept only as its prefix): two deliveries of one message have the same key,
        whatever they failed of; a replayed copy has another.
        """
        digest = hashlib.sha256()
        for part in (self.message_id or "", self.routing_key, str(self.replay_count)):
            encoded = part.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "big") + encoded)
        if self.body_sha256 is None:
            digest.update(b"body" + self.body)
        else:
            digest.update(b"sha256" + self.body_sha256)
        return digest.digest()

    def summary(self) -> dict[str, Any]:
        """The fields `dlq list` shows, JSON-ready."""
        summary: dict[str, Any] = {
            "id": self.id,
            "message_id": self.message_id,
            "task_id": self.task_id,
            "routing_key": self.routing_key,
            "error": self.code,
            "detail": self.detail,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "replay_count": self.replay_count,
        }
        if not self.body_whole:
            summary["body_truncated"] = {
                "bytes": self.body_bytes,
                "sha256": (self.body_sha256 or b"").hex(),
                "kept": len(self.body),
            }
        return summary


def dead_letter_of(
    message: Incoming,
    *,
    code: str,
    detail: str,
    failed_at: datetime,
    task_id: UUID | None = None,
) -> DeadLetter:
    """The dead letter of a message the consumer refused, as it was received.

    `task_id` is the event's, when validation got that far; else it is read from the body.
    Headers are the publisher's and the broker's (the consumer's own are never kept: a replay
    writes them anew from the row), properties as they were decoded.
    """
    body = message.body
    return DeadLetter(
        message_id=message.message_id,
        task_id=str(task_id) if task_id is not None else _task_of(body.data, whole=body.whole),
        routing_key=message.routing_key,
        code=code,
        detail=one_line(detail),
        failed_at=failed_at,
        replay_count=message.replay_count,
        headers={**message.headers, **message.broker_headers},
        properties=dict(message.properties),
        body=body.data,
        body_bytes=None if body.whole else body.size,
        body_sha256=body.sha256,
    )


def bare_letter(message: Incoming, *, code: str, detail: str, failed_at: datetime) -> DeadLetter:
    """A dead letter with only what can't fail to be stored: body, ids, routing key, reason.

    For a message whose full dead letter could not be written: it still ends somewhere an
    operator sees it.
    """
    body = message.body
    return DeadLetter(
        message_id=message.message_id,
        task_id=None,
        routing_key=message.routing_key,
        code=code,
        detail=one_line(detail),
        failed_at=failed_at,
        replay_count=0,
        headers={},
        properties={},
        body=body.data,
        body_bytes=None if body.whole else body.size,
        body_sha256=body.sha256,
    )


def transit_letter(message: Incoming, *, now: datetime) -> DeadLetter:
    """The dead letter of a message from the dead-letter queue: why the broker put it there.

    The reason is the broker's x-death, believed only on a copy the broker dead-lettered
    itself (`message.death`); a message published straight to the queue gets `unknown`.
    Nothing here can fail on a malformed body or header.
    """
    code, detail, failed_at = _from_death(message)
    return dead_letter_of(message, code=code, detail=detail, failed_at=failed_at or now)


def one_line(detail: str) -> str:
    """A detail as one line of a readable length."""
    return " ".join(detail.split())[:MAX_DETAIL]


def _from_death(message: Incoming) -> tuple[str, str, datetime | None]:
    death = message.death
    if death is None:
        detail = (
            "published straight to the dead-letter queue: not dead-lettered by the broker"
            " or by this consumer"
        )
        return UNKNOWN_CODE, detail, None
    reason, queue = death.reason, death.queue
    if reason == "delivery_limit":
        detail = (
            f"the broker dead-lettered it from {queue}: delivered too many times without an ack"
            " (it crashed or stalled the consumer each time)"
        )
    else:
        detail = f"the broker dead-lettered it from {queue} (reason: {reason or 'not given'})"
    return BROKER_REASONS.get(reason, reason or UNKNOWN_CODE), detail, death.time


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
    """The whole message, JSON-ready: properties, headers, and the body.

    The body parsed if it is JSON, else as text if it is UTF-8; else `body` is null and
    `body_base64` holds its bytes, as `dlq export` writes them: no byte is replaced unseen.
    """
    body: dict[str, object] = {}
    if letter.body_whole:
        with contextlib.suppress(ValueError, RecursionError):
            body = {"body": json.loads(letter.body)}
    if not body:
        text = _utf8(letter.body, cut=not letter.body_whole)
        if text is not None:
            body = {"body": text}
        else:
            body = {"body": None, "body_base64": base64.b64encode(letter.body).decode("ascii")}
    return {
        **letter.summary(),
        "properties": jsonable(letter.properties),
        "headers": jsonable(letter.headers),
        **body,
    }


def _utf8(data: bytes, *, cut: bool) -> str | None:
    """`data` as text if it is UTF-8, else None; a `cut` prefix may end mid-character."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A prefix cut inside a character: the bytes before it, if they are all that is wrong.
        if cut and exc.reason == "unexpected end of data":
            return _utf8(data[: exc.start], cut=False)
        return None


def _task_of(body: bytes, *, whole: bool) -> str | None:
    """The body's task_id, if the body is a JSON object that has one (valid or not)."""
    if not whole or len(body) > MAX_BODY_BYTES:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return None
    task = parsed.get("task_id") if isinstance(parsed, dict) else None
    return task if isinstance(task, str) else None


def refusal_to_replay(letter: DeadLetter) -> str | None:
    """Why `letter` can't be sent back, or None if it can: only a whole body can be replayed."""
    if letter.body_whole:
        return None
    return (
        f"its body was {letter.body_bytes:,} bytes, over the {KEPT_BODY_BYTES:,}-byte limit, and"
        f" only the first {len(letter.body):,} were kept: it can't be sent back (purge it)"
    )


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
    # A kept prefix is exported as it is: `body_truncated` in the summary says so.
    return {
        **letter.summary(),
        **body,
        "properties": jsonable(letter.properties),
        "headers": jsonable(letter.headers),
    }


def dead_letter_columns(letters: Sequence[DeadLetter]) -> tuple[list[Any], ...]:
    """The letters as the dead-letter table's columns, one list each, for one INSERT."""
    rows = [letter_row(letter) for letter in letters]
    if not rows:
        return tuple([] for _ in range(_COLUMNS))
    return tuple(list(column) for column in zip(*rows, strict=True))


def letter_row(letter: DeadLetter) -> tuple[Any, ...]:
    """One letter as the dead-letter table's columns; raises if a value can't be encoded.

    Text loses any NUL character (PostgreSQL's text holds none), a task id that is not a UUID
    is left out, the replay count is kept within the column's integer, headers and properties
    become JSON text, and the letter's key is added.
    """
    return (
        _text(letter.message_id),
        _text(letter.code),
        _text(letter.detail),
        _text(letter.routing_key),
        _uuid(letter.task_id),
        letter.failed_at or datetime.now(UTC),
        min(max(letter.replay_count, 0), 2**31 - 1),
        letter.body,
        json.dumps(jsonable(letter.properties)),
        json.dumps(jsonable(letter.headers)),
        letter.body_bytes,
        letter.body_sha256,
        letter.key,
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
