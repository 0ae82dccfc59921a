"""A message as the consumer takes it: every value typed and bounded, nothing left to trust.

The broker adapter makes one of these from each delivery (consumer.broker.decoding), once; the
pipeline and the dead letters read only this. Whatever the message carried that was malformed,
out of range, or the consumer's own header on a copy it did not sign, is not here: it is named
in `ignored`, and the message is handled as if it had not been there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

# Bodies up to this size are kept whole: no event is larger (contract §1), and a dead letter
# of that size can be replayed. A larger body is kept as its first BODY_PREFIX_BYTES, with its
# length and SHA-256, from the moment it is received.
KEPT_BODY_BYTES: Final = 1 << 20
BODY_PREFIX_BYTES: Final = 64 << 10


@dataclass(frozen=True, slots=True)
class Death:
    """The broker's account of why it dead-lettered a message (its newest `x-death` entry)."""

    reason: str
    queue: str
    time: datetime | None
    routing_key: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A value read but not believed or not kept: its kind (a metric label) and one line."""

    # "unsigned": the consumer's own header on a copy it did not sign; "out_of_range": a value
    # of the wrong type or out of bounds; "too_deep": headers nested past the limit.
    kind: str
    what: str


@dataclass(slots=True)
class Body:
    """A message body as kept: whole, or a prefix with the whole one's length and SHA-256."""

    data: bytes
    size: int
    # The whole body's SHA-256 when only a prefix is kept; None when `data` is the whole body.
    sha256: bytes | None = None

    @property
    def whole(self) -> bool:
        """Whether `data` is the whole body."""
        return self.sha256 is None


@dataclass(slots=True)
class Incoming:
    """One delivered message, decoded defensively and believed only where it may be.

    Not frozen, for speed (one is made per delivery, and a frozen dataclass costs three times
    as much to make); nothing changes one once the broker adapter has made it.

    `received_at`, `waiting_since`, `refused_since`, `retry_count`, `replay_count` and a
    `routing_key` other than the delivery's come from the consumer's own headers, and only from
    a copy it signed, within bounds (times within the retention and not in the future, counts
    within PostgreSQL's integer); otherwise they are what a message seen for the first time has.
    """

    body: Body
    message_id: str | None
    # The routing key the message was first published with.
    routing_key: str
    received_at: datetime
    # The AMQP properties that were set (and the delivery's exchange and routing key), typed:
    # text, small integers, a time. As a dead letter keeps them, and a copy is sent with them.
    properties: Mapping[str, Any] = field(default_factory=dict)
    # The publisher's headers, nested at most consumer.broker.frames.MAX_DEPTH deep; the
    # consumer's own and the broker's are not among them.
    headers: Mapping[str, Any] = field(default_factory=dict)
    # The broker's own headers (x-death and friends), kept as dead letters show them.
    broker_headers: Mapping[str, Any] = field(default_factory=dict)
    waiting_since: datetime | None = None
    refused_since: datetime | None = None
    retry_count: int = 0
    replay_count: int = 0
    # From the dead-letter queue: what the broker dead-lettered itself, kept as it is.
    transit: bool = False
    # On a transit message that came through the dead-letter exchange: the broker's reason.
    death: Death | None = None
    # What the AMQP client could not read in the message's frames (text that is not UTF-8, a
    # timestamp out of range, a header table nested too deep): such a message is a dead letter.
    unreadable: tuple[str, ...] = ()
    # What was read but not believed or not kept (for the log and a metric).
    ignored: tuple[Ignored, ...] = ()
    # Why the message could not be decoded at all, when that happened (a bug): it becomes an
    # `internal_error` dead letter.
    decode_error: str | None = None
    # The broker's handle to ack this delivery with; opaque to everyone else.
    receipt: object = None
