"""From a delivery to an Incoming: every property and header decoded defensively, once.

Nothing here raises on what a message carries. A property of the wrong type or out of range,
headers nested past the limit, the consumer's own header on a copy it did not sign (see
consumer.broker.signing) or signed but out of bounds: each is left out, and named in
`Incoming.ignored`. No I/O: the broker adapter and the in-memory fakes both decode here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from consumer.broker.frames import MAX_DEPTH
from consumer.broker.headers import (
    BROKER_HEADERS,
    MAX_COUNT,
    NO_MESSAGE_ID,
    ORIGINAL_ROUTING_KEY,
    OWN_HEADERS,
    RECEIVED_AT,
    REFUSED_SINCE,
    REPLAY_COUNT,
    RETRY_COUNT,
    SIGNATURE,
    WAITING_SINCE,
)
from consumer.broker.signing import HeaderSigner
from consumer.incoming import BODY_PREFIX_BYTES, KEPT_BODY_BYTES, Body, Death, Ignored, Incoming
from consumer.rules import MAX_CLOCK_SKEW

# The text properties, as a dead letter and a copy name them (pamqp calls `type` message_type).
TEXT_PROPERTIES: Final = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
)
_MAX_SHORT_TEXT = 255  # bytes of an AMQP short string
_MAX_OCTET = 255
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_SHOWN = 80  # characters of a value a note shows


class _Skipped:
    """A header value left out."""


_SKIPPED: Final = _Skipped()


@dataclass
class Trust:
    """What decoding believes with: this deployment's key, the retention, the dead-letter exchange.

    Until the key is known (`signer` None) no consumer header is believed.
    """

    signer: HeaderSigner | None = None
    retention: timedelta = timedelta(days=20)
    dead_letter_exchange: str = "task_build_history.dlx"
    # Up to how far ahead of this consumer's clock a time may be (other replicas' clocks).
    skew: timedelta = field(default=MAX_CLOCK_SKEW)


def decode(  # noqa: PLR0913  # what a delivery is made of, each given by name
    body: bytes,
    *,
    exchange: str | None,
    routing_key: str | None,
    properties: Mapping[str, object],
    unreadable: Sequence[str] = (),
    transit: bool = False,
    trust: Trust,
    now: datetime,
    receipt: object = None,
) -> Incoming:
    """The delivery as an Incoming; never raises (a bug here makes a `decode_error`)."""
    try:
        return _Decoding(trust, now).incoming(
            body,
            exchange=exchange if isinstance(exchange, str) else "",
            routing_key=routing_key if isinstance(routing_key, str) else "",
            properties=properties,
            unreadable=tuple(unreadable),
            transit=transit,
            receipt=receipt,
        )
    except Exception as exc:  # noqa: BLE001  # a message must never stop the consumer
        return Incoming(
            body=kept_body(body),
            message_id=None,
            routing_key=routing_key if isinstance(routing_key, str) else "",
            received_at=now,
            transit=transit,
            decode_error=f"{type(exc).__name__}: {exc}"[:500],
            receipt=receipt,
        )


def kept_body(body: bytes) -> Body:
    """The body as the consumer keeps it: whole up to KEPT_BODY_BYTES, else a prefix."""
    if len(body) <= KEPT_BODY_BYTES:
        return Body(body, len(body))
    return Body(body[:BODY_PREFIX_BYTES], len(body), hashlib.sha256(body).digest())


class _Decoding:
    """One delivery's decoding: its clock, its trust, and what it set aside."""

    def __init__(self, trust: Trust, now: datetime) -> None:
        self._trust = trust
        self._now = now
        self.ignored: list[Ignored] = []

    def incoming(  # noqa: PLR0913  # decode()'s arguments, checked
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Mapping[str, object],
        unreadable: tuple[str, ...],
        transit: bool,
        receipt: object,
    ) -> Incoming:
        kept = self._properties(properties)
        raw_headers = properties.get("headers")
        headers: dict[str, Any] = {}
        broker: dict[str, Any] = {}
        own: dict[str, Any] = {}
        if isinstance(raw_headers, Mapping):
            headers, broker, own = self._headers(raw_headers)
        elif raw_headers is not None:
            self._ignore("out_of_range", f"headers: a {type(raw_headers).__name__}, not a table")
        whole = kept_body(body)
        if not own:  # a first delivery, as nearly every one is: nothing of the consumer's
            return Incoming(
                body=whole,
                message_id=kept.get("message_id"),
                routing_key=routing_key,
                received_at=self._now,
                properties={**kept, "exchange": exchange, "routing_key": routing_key},
                headers=headers,
                broker_headers=broker,
                transit=transit,
                death=self._death(broker, exchange) if transit else None,
                unreadable=unreadable,
                ignored=tuple(self.ignored),
                receipt=receipt,
            )
        vouched = self._vouched(own, raw_headers, body)
        message_id = kept.get("message_id")
        if vouched and own.get(NO_MESSAGE_ID) is True:
            # A copy of a message that had none: the id aiormq gave the copy is nobody's.
            kept.pop("message_id", None)
            message_id = None
        believed = own if vouched else {}
        original_key = self._text_header(believed, ORIGINAL_ROUTING_KEY)
        return Incoming(
            body=whole,
            message_id=message_id,
            routing_key=original_key or routing_key,
            received_at=self._time(believed, RECEIVED_AT) or self._now,
            properties={**kept, "exchange": exchange, "routing_key": routing_key},
            headers=headers,
            broker_headers=broker,
            waiting_since=self._time(believed, WAITING_SINCE),
            refused_since=self._time(believed, REFUSED_SINCE),
            retry_count=self._count(believed, RETRY_COUNT),
            replay_count=self._count(believed, REPLAY_COUNT),
            transit=transit,
            death=self._death(broker, exchange) if transit else None,
            unreadable=unreadable,
            ignored=tuple(self.ignored),
            receipt=receipt,
        )

    def _ignore(self, kind: str, what: str) -> None:
        self.ignored.append(Ignored(kind, what))

    def _properties(self, properties: Mapping[str, object]) -> dict[str, Any]:
        """The properties that are set, each of its AMQP type and range; others ignored."""
        kept: dict[str, Any] = {}
        for name, value in properties.items():
            if value is None or value == "" or name == "headers":
                continue
            check = _CHECKS.get(name)
            if check is None:  # cluster_id, deprecated: never kept
                continue
            checked = check(value)
            if checked is None:
                self._ignore("out_of_range", f"{name}: {_shown(value)} is out of range")
            else:
                kept[name] = checked
        return kept

    def _headers(
        self, raw: Mapping[Any, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(the publisher's headers, the broker's, the consumer's own), bounded."""
        headers: dict[str, Any] = {}
        broker: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key, value in raw.items():
            name = key if isinstance(key, str) else str(key)
            if name == SIGNATURE:
                continue
            if name in OWN_HEADERS:
                own[name] = value  # believed or not below, never kept as the publisher's
                continue
            bounded = self._bounded(value, 2, name)  # the headers table itself is level 1
            if bounded is not _SKIPPED:
                (broker if name in BROKER_HEADERS else headers)[name] = bounded
        return headers, broker, own

    def _bounded(self, value: object, depth: int, where: str) -> object:
        """`value` as JSON and AMQP can both carry it, at most MAX_DEPTH levels deep."""
        if isinstance(value, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                self._ignore("too_deep", f"{where[:_SHOWN]}: nested deeper than {MAX_DEPTH} levels")
                return _SKIPPED
            if isinstance(value, Mapping):
                return self._bounded_table(value, depth, where)
            items = [self._bounded(item, depth + 1, f"{where}[]") for item in value]
            return [item for item in items if item is not _SKIPPED]
        kept = _scalar(value)
        if kept is _SKIPPED:
            self._ignore("out_of_range", f"{where[:_SHOWN]}: {_shown(value)} is out of range")
        return kept

    def _bounded_table(self, value: Mapping[Any, Any], depth: int, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            bounded = self._bounded(item, depth + 1, f"{where}.{name}")
            if bounded is not _SKIPPED:
                out[name] = bounded
        return out

    def _vouched(self, own: Mapping[str, Any], raw: object, body: bytes) -> bool:
        """Whether the consumer signed these headers; if not, each of its own is ignored."""
        signer = self._trust.signer
        if signer is not None and isinstance(raw, Mapping) and signer.vouches_for(raw, body=body):
            return True
        for name in sorted(own):
            self._ignore(
                "unsigned", f"{name}: the consumer's own header, on a copy it did not sign"
            )
        return False

    def _time(self, own: Mapping[str, Any], name: str) -> datetime | None:
        """A time the consumer wrote: believed within the retention and not in the future."""
        value = own.get(name)
        if value is None:
            return None
        parsed = _parse_time(value)
        try:
            earliest = self._now - self._trust.retention
        except OverflowError:  # a retention of thousands of years
            earliest = datetime.min.replace(tzinfo=UTC)
        if parsed is not None and earliest <= parsed <= self._now + self._trust.skew:
            return parsed
        self._ignore("out_of_range", f"{name}: {_shown(value)} is not a time in range")
        return None

    def _count(self, own: Mapping[str, Any], name: str) -> int:
        """A count the consumer wrote: believed from 0 to MAX_COUNT."""
        value = own.get(name)
        if value is None:
            return 0
        if _is_int(value) and 0 <= value <= MAX_COUNT:
            return int(value)
        self._ignore("out_of_range", f"{name}: {_shown(value)} is not a count in range")
        return 0

    def _text_header(self, own: Mapping[str, Any], name: str) -> str | None:
        value = own.get(name)
        if value is None:
            return None
        if isinstance(value, str) and 0 < len(value.encode()) <= _MAX_SHORT_TEXT:
            return value
        self._ignore("out_of_range", f"{name}: {_shown(value)} is not a routing key")
        return None

    def _death(self, broker: Mapping[str, Any], exchange: str) -> Death | None:
        """The broker's newest x-death entry (it puts it first), if it has a readable one.

        Believed only on a delivery through the dead-letter exchange, which is internal: only
        the broker publishes to it. A message sent straight to the dead-letter queue (through
        the default exchange) was not dead-lettered by anyone, whatever its x-death says.
        """
        if exchange != self._trust.dead_letter_exchange:
            return None
        deaths = broker.get("x-death")
        if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
            return None
        death = deaths[0]
        keys = death.get("routing-keys")
        first_key = keys[0] if isinstance(keys, list) and keys else ""
        when = death.get("time")
        return Death(
            reason=_header_text(death.get("reason")),
            queue=_header_text(death.get("queue")),
            time=_utc(when) if isinstance(when, datetime) else None,
            routing_key=_header_text(first_key),
        )


def _scalar(value: object) -> object:
    """A header value AMQP and JSON both carry, as kept; _SKIPPED for anything else."""
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, datetime):
        return _utc(value) or _SKIPPED
    if value is None or isinstance(value, str | bytes | int | float | Decimal):
        return value
    return _SKIPPED


def _short_text(value: object) -> str | None:
    """An AMQP short string: text of at most 255 bytes in UTF-8."""
    if not isinstance(value, str):
        return None
    short = len(value) <= _MAX_SHORT_TEXT // 4 or len(value.encode("utf-8", "replace")) <= 255  # noqa: PLR2004  # the wire's limit
    return value if short else None


def _delivery_mode(value: object) -> int | None:
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and value in (1, 2)
        else None
    )


def _octet(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_OCTET:
        return value
    return None


def _timestamp(value: object) -> datetime | None:
    utc = _utc(value) if isinstance(value, datetime) else None
    return utc if utc is not None and utc >= _EARLIEST else None


_CHECKS: Final[dict[str, Callable[[object], object | None]]] = {
    **dict.fromkeys(TEXT_PROPERTIES, _short_text),
    "delivery_mode": _delivery_mode,
    "priority": _octet,
    "timestamp": _timestamp,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _utc(value: datetime) -> datetime | None:
    """`value` in UTC; None when it has no offset or UTC can't hold it (year 0 or 10000)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _parse_time(value: object) -> datetime | None:
    """An RFC 3339 time with an offset, as the consumer writes them; None for anything else."""
    if not isinstance(value, str) or len(value) > 64:  # noqa: PLR2004  # far longer than any time
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return _utc(parsed)


def _header_text(value: object) -> str:
    """A header value as text: AMQP strings may arrive as bytes; anything else is ""."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _shown(value: object) -> str:
    """A value as a note shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
