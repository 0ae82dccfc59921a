"""Frames read leniently: what pamqp can't decode arrives anyway, what was set aside named."""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime
from typing import cast

import pamqp.frame
import pytest
from aiormq.connection import FrameReceiver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands, constants, header

from consumer.broker import frames
from consumer.broker.frames import MAX_DEPTH, lenient_unmarshal, problems_of, strict_unmarshal
from tests.hostile import (
    RawMessage,
    array,
    integer,
    nested_table,
    properties_of,
    shortstr,
    table,
    table_bytes,
    text,
    timestamp_field,
)


def header_frame(message: RawMessage, channel: int = 1) -> bytes:
    """The content header frame of `message`, as the broker sends it."""
    payload = message.header_payload()
    return struct.pack(">BHI", constants.FRAME_HEADER, channel, len(payload)) + payload + b"\xce"


def deliver_frame(routing_key: bytes, channel: int = 1) -> bytes:
    """A basic.deliver method frame with `routing_key` as raw bytes."""
    payload = (
        struct.pack(">HH", 60, 60)
        + shortstr("ctag")
        + struct.pack(">Q", 7)
        + b"\x01"  # redelivered
        + shortstr("exchange")
        + shortstr(routing_key)
    )
    return struct.pack(">BHI", constants.FRAME_METHOD, channel, len(payload)) + payload + b"\xce"


def read_header(message: RawMessage) -> commands.Basic.Properties:
    """The properties of `message`'s header frame, read leniently."""
    consumed, channel, value = lenient_unmarshal(header_frame(message))
    assert (consumed, channel) == (len(header_frame(message)), 1)
    assert isinstance(value, header.ContentHeader)
    assert value.body_size == len(message.body)
    return value.properties


class TestWellFormedFrames:
    """A frame pamqp reads is read exactly as pamqp reads it, with no problems."""

    def test_the_same_as_pamqp(self) -> None:
        """Headers with arrays, integers and text: pamqp's own result, untouched."""
        message = RawMessage(
            b"{}",
            properties=properties_of(
                message_id="m-1", headers=table_bytes([("a", array([integer(1), text("x")]))])
            ),
        )
        data = header_frame(message)
        lenient, strict = lenient_unmarshal(data)[2], strict_unmarshal(data)[2]
        assert isinstance(lenient, header.ContentHeader)
        assert isinstance(strict, header.ContentHeader)
        assert lenient.properties == strict.properties
        assert problems_of(read_header(message)) == ()


class TestWhatPamqpCannotRead:
    """Each kind of value that made the client drop its connection is read, and named."""

    def test_a_timestamp_past_the_year_9999(self) -> None:
        """2**64-1 seconds (OverflowError in pamqp): left out, the rest kept."""
        properties = read_header(
            RawMessage(b"{}", properties=properties_of(message_id="m", timestamp=2**64 - 1))
        )
        assert (properties.timestamp, properties.message_id) == (None, "m")
        assert problems_of(properties) == (
            "timestamp: timestamp 18446744073709551615 is out of range; left out",
        )

    def test_headers_nested_a_thousand_deep(self) -> None:
        """RecursionError in pamqp: the table is kept to MAX_DEPTH levels."""
        properties = read_header(
            RawMessage(b"{}", properties=properties_of(message_id="m", headers=nested_table(1000)))
        )
        depth, value = 0, cast("object", properties.headers)
        while isinstance(value, dict):
            value = value.get("deep", value.get("n"))
            depth += 1
        assert depth == MAX_DEPTH  # the headers table itself is the first level
        (problem,) = problems_of(properties)
        assert f"nested deeper than {MAX_DEPTH} levels" in problem
        assert len(problem) < 200

    @pytest.mark.parametrize("name", ["message_id", "content_type", "app_id", "user_id"])
    def test_text_that_is_not_utf8(self, name: str) -> None:
        """Invalid UTF-8 in a short string: U+FFFD for the bad bytes."""
        raw = b"ab\xff\xfe"
        # properties_of encodes these two itself; the others are given encoded.
        if name == "message_id":
            encoded = properties_of(content_type=None, message_id=raw)
        elif name == "content_type":
            encoded = properties_of(content_type=raw)
        else:
            encoded = properties_of(content_type=None) | {name: shortstr(raw)}
        properties = read_header(RawMessage(b"{}", properties=encoded))
        assert getattr(properties, name) == "ab\ufffd\ufffd"
        assert problems_of(properties) == (f"{name}: not UTF-8; unreadable bytes replaced",)

    def test_header_names_and_times_in_tables(self) -> None:
        """A name that isn't UTF-8 and a time out of range inside headers; the rest kept."""
        headers = table_bytes(
            [
                (b"\xffkey", text("v")),
                ("when", timestamp_field(2**63)),
                ("fine", integer(-5)),
                ("inner", table([("t", timestamp_field(2**64 - 1)), ("ok", text("y"))])),
            ]
        )
        properties = read_header(RawMessage(b"{}", properties=properties_of(headers=headers)))
        assert properties.headers == {"\ufffdkey": "v", "fine": -5, "inner": {"ok": "y"}}
        assert len(problems_of(properties)) == 3

    def test_a_routing_key_that_is_not_utf8(self) -> None:
        """basic.deliver with a routing key of invalid UTF-8: replaced, the frame delivered."""
        consumed, channel, value = lenient_unmarshal(deliver_frame(b"history.\xff"))
        assert isinstance(value, commands.Basic.Deliver)
        assert (value.routing_key, value.exchange, value.delivery_tag) == (
            "history.\ufffd",
            "exchange",
            7,
        )
        assert value.redelivered is True
        assert problems_of(value) == ("routing_key: not UTF-8; unreadable bytes replaced",)
        assert (consumed, channel) == (len(deliver_frame(b"history.\xff")), 1)

    def test_a_broken_frame_still_fails(self) -> None:
        """A frame cut short is not salvaged: the connection is broken, and says so."""
        data = header_frame(RawMessage(b"{}", properties=properties_of(message_id="m")))
        with pytest.raises(pamqp.exceptions.UnmarshalingException):
            lenient_unmarshal(data[:-1])


class TestInstalled:
    """install() makes aiormq's frame reader lenient: the one place the client reads frames."""

    async def test_aiormqs_reader_reads_what_it_could_not(self) -> None:
        """Aiormq's FrameReceiver, given a hostile header frame, returns it instead of raising."""
        frames.install()
        frames.install()  # idempotent
        assert pamqp.frame.unmarshal is lenient_unmarshal
        reader = asyncio.StreamReader()
        reader.feed_data(
            header_frame(RawMessage(b"{}", properties=properties_of(timestamp=2**64 - 1)))
        )
        receiver = FrameReceiver(reader)
        receiver.started = True
        _, _, value = await receiver.get_frame()
        assert isinstance(value, header.ContentHeader)
        assert problems_of(value.properties)


# Any header table the wire can carry, with the field types the broker accepts.
_leaves = st.one_of(
    st.binary(max_size=8).map(text),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(integer),
    st.integers(min_value=0, max_value=2**64 - 1).map(timestamp_field),
)
_fields = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(st.tuples(st.binary(max_size=6), inner), max_size=3).map(table),
        st.lists(inner, max_size=3).map(array),
    ),
    max_leaves=12,
)


class TestAnyTable:
    """For any table, reading never raises, and a readable one reads as pamqp reads it."""

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(st.tuples(st.binary(max_size=6), _fields), max_size=5),
        st.integers(min_value=0, max_value=2**64 - 1),
        st.binary(max_size=10),
    )
    def test_read_whatever_it_holds(
        self, entries: list[tuple[bytes, object]], seconds: int, message_id: bytes
    ) -> None:
        """The header frame always comes back as a header frame of the same body size."""
        message = RawMessage(
            b"body",
            properties=properties_of(
                message_id=message_id,
                headers=table_bytes(entries),  # type: ignore[arg-type]  # (key, Field) pairs
                timestamp=seconds,
            ),
        )
        try:
            strict = strict_unmarshal(header_frame(message))[2]
        except Exception:  # noqa: BLE001  # what the lenient reading is for
            strict = None
        properties = read_header(message)
        if isinstance(strict, header.ContentHeader):
            assert properties == strict.properties
            assert problems_of(properties) == ()
        else:
            assert problems_of(properties)
        assert isinstance(properties.headers, dict)
        if properties.timestamp is not None:
            assert properties.timestamp <= datetime.max.replace(tzinfo=UTC)
