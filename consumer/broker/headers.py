"""The headers of retries, replays and dead letters: their names, and what a copy carries.

Reading them is `decoding`'s job (believed only when signed, `signing`); this module names
them and writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

# Headers of contract §2, and the consumer's own for the retry queue.
ERROR = "x-error"
ERROR_DETAIL = "x-error-detail"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
FAILED_AT = "x-failed-at"
REPLAY_COUNT = "x-replay-count"
WAITING_SINCE = "x-unknown-task-since"
REFUSED_SINCE = "x-database-refused-since"
RECEIVED_AT = "x-received-at"
RETRY_COUNT = "x-retry-count"
# aiormq gives every message it publishes a message_id, a random one when it has none. A copy
# (a retry, a replay) of a message that had none carries this header instead, and is read as
# having none: a dead letter keeps the original's absence, and logs and rows agree.
NO_MESSAGE_ID = "x-no-message-id"
# The consumer's signature over its own headers and the body (consumer.broker.signing).
SIGNATURE = "x-task-history-signature"
# Headers only this consumer and its tools write: on any message, believed only when signed.
OWN_HEADERS = frozenset(
    {
        ERROR,
        ERROR_DETAIL,
        ORIGINAL_ROUTING_KEY,
        FAILED_AT,
        REPLAY_COUNT,
        WAITING_SINCE,
        REFUSED_SINCE,
        RECEIVED_AT,
        RETRY_COUNT,
        NO_MESSAGE_ID,
    }
)
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
# What a copy never carries over from the message it copies: the consumer's headers are written
# anew and signed again, the broker's belong to the original's journey.
NOT_COPIED = OWN_HEADERS | BROKER_HEADERS | {SIGNATURE}
# The largest count the consumer believes: PostgreSQL's integer, which holds the replay count.
MAX_COUNT = 2**31 - 1


def routing_key(context_type: str) -> str:
    """The routing key an event is published with: `history.<context_type>`."""
    return f"history.{context_type}"


def publisher_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """`headers` without the consumer's and the broker's: what the publisher set."""
    return {name: value for name, value in headers.items() if name not in NOT_COPIED}


def retry_headers(  # noqa: PLR0913  # one keyword per header a retry writes
    headers: Mapping[str, Any],
    *,
    routing_key: str,
    received_at: datetime,
    retry_count: int,
    waiting_since: datetime | None = None,
    refused_since: datetime | None = None,
    message_id: str | None,
) -> dict[str, Any]:
    """The publisher's headers plus what a retry needs to know when it comes back (unsigned).

    Every value is the one the consumer worked with, written every time: a header that was
    not believed can't reset a window.
    """
    own: dict[str, Any] = {
        ORIGINAL_ROUTING_KEY: routing_key,
        RECEIVED_AT: received_at.isoformat(),
        RETRY_COUNT: min(retry_count + 1, MAX_COUNT),
    }
    if waiting_since is not None:
        own[WAITING_SINCE] = waiting_since.isoformat()
    if refused_since is not None:
        own[REFUSED_SINCE] = refused_since.isoformat()
    return with_id_absence({**publisher_headers(headers), **own}, message_id=message_id)


def replay_headers(
    headers: Mapping[str, Any], *, replay_count: int, message_id: str | None
) -> dict[str, Any]:
    """The headers a replayed copy carries (unsigned): the publisher's, the replay counted.

    Nothing of the consumer's is taken from `headers`, which a publisher may have written:
    the count comes from the dead letter's own column.
    """
    counted = {**publisher_headers(headers), REPLAY_COUNT: min(replay_count + 1, MAX_COUNT)}
    return with_id_absence(counted, message_id=message_id)


def with_id_absence(headers: Mapping[str, Any], *, message_id: str | None) -> dict[str, Any]:
    """`headers` for a copy of a message: NO_MESSAGE_ID added when it had no message_id."""
    marked = {name: value for name, value in headers.items() if name != NO_MESSAGE_ID}
    if not message_id:
        marked[NO_MESSAGE_ID] = True
    return marked
