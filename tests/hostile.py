"""A publisher that sends whatever bytes AMQP 0-9-1 can carry, as a careless or hostile one would.

aio-pika and aiormq only send what they can encode (text keys, in-range times, valid UTF-8). This
one writes the frames itself: a routing key, properties and header tables given as raw bytes,
so tests can send what the broker accepts and a client may fail to read (invalid UTF-8, field
types no client knows, tables nested a thousand deep, timestamps past the year 9999). The
handshake and the confirms go through pamqp, like any client's.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self, TypeVar
from urllib.parse import unquote, urlsplit

from pamqp import commands, constants, frame, header
from pamqp.heartbeat import Heartbeat

T = TypeVar("T")

# Property flags of Basic.Properties, in wire order (AMQP 0-9-1, section 4.2.6.1).
PROPERTY_FLAGS = {
    "content_type": 1 << 15,
    "content_encoding": 1 << 14,
    "headers": 1 << 13,
    "delivery_mode": 1 << 12,
    "priority": 1 << 11,
    "correlation_id": 1 << 10,
    "reply_to": 1 << 9,
    "expiration": 1 << 8,
    "message_id": 1 << 7,
    "timestamp": 1 << 6,
    "type": 1 << 5,
    "user_id": 1 << 4,
    "app_id": 1 << 3,
}


def shortstr(value: bytes | str) -> bytes:
    """A short string: one length byte and up to 255 bytes, UTF-8 or not."""
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">B", len(raw)) + raw[:255]


def longstr(value: bytes | str) -> bytes:
    """A long string: a 4-byte length and the bytes."""
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


@dataclass(frozen=True)
class Field:
    """One field value of a table or an array: its type tag and its encoded bytes."""

    tag: bytes
    raw: bytes

    def encode(self) -> bytes:
        """The tag and the value, as they go on the wire."""
        return self.tag + self.raw


def text(value: bytes | str) -> Field:
    """A long-string field ('S'), UTF-8 or not."""
    return Field(b"S", longstr(value))


def integer(value: int) -> Field:
    """A signed 64-bit field ('l'); `value` wraps to 64 bits."""
    return Field(b"l", struct.pack(">Q", value % 2**64))


def timestamp_field(seconds: int) -> Field:
    """A timestamp field ('T'): any unsigned 64-bit number of seconds."""
    return Field(b"T", struct.pack(">Q", seconds % 2**64))


def table(entries: Sequence[tuple[bytes | str, Field]]) -> Field:
    """A nested table field ('F'); keys may be any bytes."""
    return Field(b"F", table_bytes(entries))


def array(items: Sequence[Field]) -> Field:
    """An array field ('A')."""
    raw = b"".join(item.encode() for item in items)
    return Field(b"A", struct.pack(">I", len(raw)) + raw)


def table_bytes(entries: Sequence[tuple[bytes | str, Field]]) -> bytes:
    """A field table as the headers property carries it: a 4-byte length, then key-value pairs."""
    raw = b"".join(shortstr(key) + value.encode() for key, value in entries)
    return struct.pack(">I", len(raw)) + raw


def nested_table(depth: int) -> bytes:
    """A headers table `depth` tables deep."""
    inner = table([("leaf", text("bottom"))])
    for _ in range(depth - 1):
        inner = table([("n", inner)])
    return table_bytes([("deep", inner)])


@dataclass
class RawMessage:
    """A message as bytes: each property already encoded (see PROPERTY_FLAGS for the names)."""

    body: bytes
    routing_key: bytes | str = b"history.agent_turn"
    exchange: str = ""
    properties: dict[str, bytes] = field(default_factory=dict)

    def header_payload(self) -> bytes:
        """The content header frame's payload: class, weight, body size, flags, properties."""
        flags = 0
        parts = []
        for name, flag in PROPERTY_FLAGS.items():
            if name in self.properties:
                flags |= flag
                parts.append(self.properties[name])
        return struct.pack(">HHQH", 60, 0, len(self.body), flags) + b"".join(parts)


def properties_of(  # one keyword per common property
    *,
    message_id: bytes | str | None = None,
    content_type: bytes | str | None = "application/json",
    delivery_mode: int | None = 2,
    headers: bytes | None = None,
    timestamp: int | None = None,
    **others: bytes,
) -> dict[str, bytes]:
    """Encoded properties: the usual ones from values, any other given as raw bytes."""
    encoded = dict(others)
    if content_type is not None:
        encoded["content_type"] = shortstr(content_type)
    if message_id is not None:
        encoded["message_id"] = shortstr(message_id)
    if delivery_mode is not None:
        encoded["delivery_mode"] = struct.pack(">B", delivery_mode)
    if headers is not None:
        encoded["headers"] = headers
    if timestamp is not None:
        encoded["timestamp"] = struct.pack(">Q", timestamp % 2**64)
    return encoded


class _RawHeader(header.ContentHeader):
    """A content header whose payload is given, not built from properties."""

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self._payload = payload

    def marshal(self) -> bytes:
        return self._payload


class _RawPublish(commands.Basic.Publish):
    """A basic.publish whose routing key may be any bytes."""

    def __init__(self, exchange: str, routing_key: bytes) -> None:
        super().__init__(exchange=exchange)
        self._raw_key = routing_key

    def marshal(self) -> bytes:
        # reserved-1 (short), exchange (shortstr), routing key (shortstr), mandatory/immediate
        return struct.pack(">H", 0) + shortstr(self.exchange) + shortstr(self._raw_key) + b"\x00"


class RawPublisher:
    """One connection and one confirming channel, written frame by frame."""

    def __init__(self, url: str) -> None:
        """Connect to the broker at `url` (an amqp:// URL) when entered."""
        self._url = urlsplit(url)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._sent = 0
        self._frame_max = 131_072

    async def __aenter__(self) -> Self:
        """Open the connection and a channel in confirm mode."""
        self._reader, self._writer = await asyncio.open_connection(
            self._url.hostname or "localhost", self._url.port or 5672
        )
        self._writer.write(header.ProtocolHeader().marshal())
        await self._expect(commands.Connection.Start)
        user, password = unquote(self._url.username or "guest"), unquote(self._url.password or "")
        self._send(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "tests.hostile"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
                locale="en_US",
            ),
        )
        tune = await self._expect(commands.Connection.Tune)
        self._frame_max = tune.frame_max or self._frame_max
        self._send(0, commands.Connection.TuneOk(channel_max=1, frame_max=self._frame_max))
        vhost = unquote(self._url.path[1:]) if self._url.path not in ("", "/") else "/"
        self._send(0, commands.Connection.Open(virtual_host=vhost))
        await self._expect(commands.Connection.OpenOk)
        self._send(1, commands.Channel.Open())
        await self._expect(commands.Channel.OpenOk)
        self._send(1, commands.Confirm.Select())
        await self._expect(commands.Confirm.SelectOk)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    def _send(self, channel: int, value: frame.FrameTypes) -> None:
        assert self._writer is not None
        self._writer.write(frame.marshal(value, channel))

    async def _frame(self) -> frame.FrameTypes:
        assert self._reader is not None
        while True:
            head = await self._reader.readexactly(7)
            _, _, size = struct.unpack(">BHI", head)
            rest = await self._reader.readexactly(size + 1)
            _, _, value = frame.unmarshal(head + rest)
            if not isinstance(value, Heartbeat):
                return value

    async def _expect(self, kind: type[T]) -> T:
        value = await self._frame()
        if not isinstance(value, kind):
            raise ConnectionError(f"the broker answered {value!r}, not {kind.__name__}")
        return value

    async def publish(self, message: RawMessage) -> None:
        """Publish and wait for the broker's confirm; ConnectionError if it refuses."""
        await self.publish_many([message])

    async def publish_many(self, messages: Sequence[RawMessage]) -> None:
        """Publish all, then wait for a confirm of each (in one ack or several)."""
        assert self._writer is not None
        key: bytes
        for message in messages:
            key = (
                message.routing_key.encode()
                if isinstance(message.routing_key, str)
                else message.routing_key
            )
            self._send(1, _RawPublish(message.exchange, key))
            self._send(1, _RawHeader(message.header_payload()))
            room = self._frame_max - 8
            for start in range(0, len(message.body), room):
                self._writer.write(
                    frame._marshal(  # noqa: SLF001  # the body bytes as they are
                        constants.FRAME_BODY, 1, message.body[start : start + room]
                    )
                )
        await self._writer.drain()
        first, self._sent = self._sent + 1, self._sent + len(messages)
        waiting = set(range(first, self._sent + 1))
        while waiting:
            value = await self._frame()
            if isinstance(value, commands.Basic.Ack):
                tag = value.delivery_tag
                waiting -= {n for n in waiting if n <= tag} if value.multiple else {tag}
            elif isinstance(value, commands.Basic.Nack):
                raise ConnectionError(f"the broker refused message {value.delivery_tag}")
            elif isinstance(value, commands.Channel.Close | commands.Connection.Close):
                raise ConnectionError(f"the broker closed: {value.reply_text}")
