"""The headers of dead letters and retries: their names, and how they are read and written."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

# Headers of contract §2, and the consumer's own for unknown-task retries.
ERROR = "x-error"
ERROR_DETAIL = "x-error-detail"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
FAILED_AT = "x-failed-at"
REPLAY_COUNT = "x-replay-count"
WAITING_SINCE = "x-unknown-task-since"
RECEIVED_AT = "x-received-at"
RETRY_COUNT = "x-retry-count"
# aiormq gives every message it publishes a message_id, a random one when it has none. A copy
# (a retry, a replay) of a message that had none carries this header instead, and is read as
# having none: a dead letter keeps the original's absence, and logs and rows agree.
NO_MESSAGE_ID = "x-no-message-id"
# Headers the broker writes when it dead-letters or redelivers a message. A copy leaves them
# out: they describe the original's journey, and from 3.13 the broker refuses them from clients.
BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


class MessageLike(Protocol):
    """What the header helpers and copies read of a message: aio-pika's, or a Received."""

    @property
    def body(self) -> bytes: ...  # noqa: D102  # a protocol's members are its attributes
    @property
    def headers(self) -> Mapping[str, Any] | None: ...  # noqa: D102
    @property
    def routing_key(self) -> str | None: ...  # noqa: D102
    @property
    def message_id(self) -> str | None: ...  # noqa: D102
    @property
    def content_type(self) -> str | None: ...  # noqa: D102
    @property
    def content_encoding(self) -> str | None: ...  # noqa: D102
    @property
    def priority(self) -> int | None: ...  # noqa: D102
    @property
    def correlation_id(self) -> str | None: ...  # noqa: D102
    @property
    def reply_to(self) -> str | None: ...  # noqa: D102
    @property
    def timestamp(self) -> datetime | None: ...  # noqa: D102
    @property
    def type(self) -> str | None: ...  # noqa: D102
    @property
    def app_id(self) -> str | None: ...  # noqa: D102


def routing_key(context_type: str) -> str:
    """The routing key an event is published with: `history.<context_type>`."""
    return f"history.{context_type}"


def header_text(value: object) -> str:
    """A header or property value as text: AMQP strings may arrive as bytes; others are ""."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def original_routing_key(message: MessageLike) -> str:
    """The key the message was first published with, even after a retry or a replay."""
    first = header_text((message.headers or {}).get(ORIGINAL_ROUTING_KEY))
    return first or message.routing_key or ""


def retry_headers(
    headers: dict[str, Any], *, routing_key: str, since: datetime, received_at: datetime
) -> dict[str, Any]:
    """The original headers plus what a retry needs to know when it comes back.

    `since` and `received_at` are the values the consumer worked with (read from these headers
    when they were valid): written every time, so a malformed header can't reset the window.
    """
    try:
        count = int(headers.get(RETRY_COUNT) or 0)
    except (TypeError, ValueError):
        count = 0
    return {
        **headers,
        ORIGINAL_ROUTING_KEY: routing_key,
        WAITING_SINCE: since.isoformat(),
        RECEIVED_AT: received_at.isoformat(),
        RETRY_COUNT: count + 1,
    }


def header_time(message: MessageLike, name: str) -> datetime | None:
    """A timestamp header written by this consumer; None if absent, malformed or naive."""
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Anyone can set a header: a time without an offset can't be compared, so it counts as none.
    return parsed if parsed.tzinfo is not None else None


def with_id_absence(headers: Mapping[str, Any], *, message_id: str | None) -> dict[str, Any]:
    """`headers` for a copy of a message: NO_MESSAGE_ID added when it had no message_id."""
    marked = {name: value for name, value in headers.items() if name != NO_MESSAGE_ID}
    if not message_id:
        marked[NO_MESSAGE_ID] = True
    return marked
