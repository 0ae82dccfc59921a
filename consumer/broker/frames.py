"""Frames read leniently: a message whose properties the AMQP client can't decode still arrives.

The broker passes a message's properties and headers through without checking them, but pamqp,
which aiormq reads every frame with, raises on some of what it passes: text that is not UTF-8
(a routing key, a message_id, a header's name), a timestamp past the year 9999, a header table
nested deeper than Python's recursion limit. aiormq then drops the whole connection, and the
broker delivers the same message again on the next one: one such message stopped the consumer
about every five seconds, twenty times over before the delivery limit took it away, and then
the same again from the dead-letter queue.

Here a frame pamqp can't read is read a second time, leniently: text that is not UTF-8 with
U+FFFD for the bytes that can't be read, a timestamp out of range left out, tables and arrays
cut at MAX_DEPTH levels, a table holding a field type nobody knows left out whole. What was left
out or changed is listed on the frame (`problems_of`), so the consumer counts it and a dead
letter says so. pamqp reads first, so a frame it can read is read exactly as before; the
lenient reading only runs when pamqp failed. `install()` puts it in the one place aiormq reads
frames: `pamqp.frame.unmarshal`, which aiormq's connection looks up for every frame.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import pamqp.frame
from pamqp import commands, constants, decode, header
from pamqp.base import Frame

# Levels of nested tables and arrays kept in headers; deeper values are left out. Deep enough
# for any header a tool writes (x-death is three), shallow enough that nothing downstream
# (JSON, jsonb, a copy re-encoded for the retry queue) meets a recursion limit.
MAX_DEPTH: Final = 32
# The attribute a salvaged frame or properties object carries its problems in.
_PROBLEMS = "problems"
_FRAME_HEADER_SIZE = 7
_TIMESTAMP_BYTES = 8
_SIZED = frozenset({b"S", b"x"})

# pamqp's own reading, as it was before install().
strict_unmarshal: Final = pamqp.frame.unmarshal


class _Skipped:
    """A value left out."""


SKIPPED: Final = _Skipped()


def install() -> None:
    """Read every AMQP frame of this process leniently from now on (idempotent)."""
    if pamqp.frame.unmarshal is not lenient_unmarshal:
        pamqp.frame.unmarshal = lenient_unmarshal


def lenient_unmarshal(data_in: bytes) -> tuple[int, int, pamqp.frame.FrameTypes]:
    """Pamqp's unmarshal; where it fails on a method or content header frame, a lenient reading.

    Anything else it fails on (a frame cut short, an unknown frame type) fails as before.
    """
    try:
        return strict_unmarshal(data_in)
    except Exception:  # pamqp's own errors, and RecursionError, OverflowError, OSError
        salvaged = salvage(data_in)
        if salvaged is None:
            raise
        return salvaged


def problems_of(value: object) -> tuple[str, ...]:
    """What a lenient reading left out or changed in a frame or properties object; () if none."""
    found = getattr(value, _PROBLEMS, None)
    return tuple(found) if found else ()


def salvage(data_in: bytes) -> tuple[int, int, pamqp.frame.FrameTypes] | None:
    """A method or content header frame read leniently, or None if even that can't be done."""
    if len(data_in) < _FRAME_HEADER_SIZE:
        return None
    frame_type, channel, size = struct.unpack_from(">BHI", data_in)
    end = _FRAME_HEADER_SIZE + size
    if len(data_in) <= end or data_in[end] != constants.FRAME_END:
        return None
    payload = memoryview(data_in)[_FRAME_HEADER_SIZE:end]
    try:
        if frame_type == constants.FRAME_METHOD:
            value: pamqp.frame.FrameTypes = _method(payload)
        elif frame_type == constants.FRAME_HEADER:
            value = _content_header(payload)
        else:
            return None
    except (ValueError, struct.error, IndexError, KeyError, TypeError):
        return None
    return end + 1, channel, value


def _method(payload: memoryview) -> Frame:
    """A method frame whose text fields may not be UTF-8 (a routing key, say)."""
    (index,) = struct.unpack_from(">I", payload)
    method: Frame = commands.INDEX_MAPPING[index]()
    problems: list[str] = []
    position, bits, bit = 4, 0, -1
    for name in method.__slots__:
        kind = method.amqp_type(name)
        if kind == "bit":
            if bit < 0 or bit == 8:  # noqa: PLR2004  # eight bits to an octet
                bits, bit = payload[position], 0
                position += 1
            setattr(method, name, bool(bits & (1 << bit)))
            bit += 1
            continue
        bit = -1
        position, value = _value(kind, payload, position, problems, name)
        setattr(method, name, None if value is SKIPPED else value)
    setattr(method, _PROBLEMS, problems)
    return method


def _content_header(payload: memoryview) -> header.ContentHeader:
    """A content header whose properties pamqp could not read: what can be read, and why not."""
    class_id, weight, body_size = struct.unpack_from(">HHQ", payload)
    consumed, flags = header.ContentHeader._get_flags(bytes(payload[12:]))  # noqa: SLF001  # pamqp's flag reader
    properties = commands.Basic.Properties()
    problems: list[str] = []
    position = 12 + consumed
    for name in properties.__slots__:
        if not flags & properties.flags[name]:
            continue
        kind = getattr(commands.Basic.Properties, "_" + name)
        position, value = _value(kind, payload, position, problems, name)
        setattr(properties, name, None if value is SKIPPED else value)
    setattr(properties, _PROBLEMS, problems)
    content_header = header.ContentHeader(weight=weight, body_size=body_size, properties=properties)
    content_header.class_id = class_id
    return content_header


def _value(
    kind: str, data: memoryview, at: int, problems: list[str], where: str
) -> tuple[int, object]:
    """A property or method argument of AMQP type `kind` at `at`: (position after it, value)."""
    if kind == "shortstr":
        length = data[at]
        end = at + 1 + length
        _check(end, data)
        return end, _text(bytes(data[at + 1 : end]), problems, where)
    if kind == "table":
        return _table(data, at, 1, problems, where)
    if kind == "timestamp":
        end = at + _TIMESTAMP_BYTES
        _check(end, data)
        return end, _timestamp(bytes(data[at:end]), problems, where)
    consumed, value = decode.by_type(bytes(data[at:]), kind)
    return at + consumed, value


def _check(end: int, data: memoryview) -> None:
    if end > len(data):
        raise ValueError("a value runs past the end of its frame")


def _text(raw: bytes, problems: list[str], where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{where}: not UTF-8; unreadable bytes replaced")
        return raw.decode("utf-8", "replace")


def _timestamp(raw: bytes, problems: list[str], where: str) -> datetime | _Skipped:
    try:
        return decode.timestamp(raw)[1]
    except (OverflowError, ValueError, OSError):
        seconds = int.from_bytes(raw, "big")
        problems.append(f"{where}: timestamp {seconds} is out of range; left out")
        return SKIPPED


def _table(
    data: memoryview, at: int, depth: int, problems: list[str], where: str
) -> tuple[int, dict[str, Any] | _Skipped]:
    """A field table: its readable entries; left out whole past MAX_DEPTH or if unreadable."""
    (length,) = struct.unpack_from(">I", data, at)
    end = at + 4 + length
    _check(end, data)
    if depth > MAX_DEPTH:
        problems.append(f"{where}: nested deeper than {MAX_DEPTH} levels; left out")
        return end, SKIPPED
    entries: dict[str, Any] = {}
    position = at + 4
    try:
        while position < end:
            key_length = data[position]
            key_end = position + 1 + key_length
            _check(key_end, data)
            key = _text(bytes(data[position + 1 : key_end]), problems, f"{where}: a name")
            position, value = _field(
                data, key_end, end, depth=depth, problems=problems, where=f"{where}.{key}"
            )
            if value is not SKIPPED:
                entries[key] = value
    except (ValueError, struct.error, IndexError, KeyError) as exc:
        problems.append(f"{where}: unreadable ({exc}); left out")
        return end, SKIPPED
    return end, entries


def _array(
    data: memoryview, at: int, depth: int, problems: list[str], where: str
) -> tuple[int, list[Any] | _Skipped]:
    """A field array: its readable items, with the same limits as a table."""
    (length,) = struct.unpack_from(">I", data, at)
    end = at + 4 + length
    _check(end, data)
    if depth > MAX_DEPTH:
        problems.append(f"{where}: nested deeper than {MAX_DEPTH} levels; left out")
        return end, SKIPPED
    items: list[Any] = []
    position = at + 4
    try:
        while position < end:
            position, value = _field(
                data, position, end, depth=depth, problems=problems, where=f"{where}[]"
            )
            if value is not SKIPPED:
                items.append(value)
    except (ValueError, struct.error, IndexError, KeyError) as exc:
        problems.append(f"{where}: unreadable ({exc}); left out")
        return end, SKIPPED
    return end, items


def _field(  # noqa: PLR0913  # the reader's position and what it reports to
    data: memoryview, at: int, end: int, *, depth: int, problems: list[str], where: str
) -> tuple[int, object]:
    """One tagged value of a table or an array, at `at`, within `end`."""
    tag = bytes(data[at : at + 1])
    start = at + 1
    nested: dict[bytes, Callable[..., tuple[int, object]]] = {b"F": _table, b"A": _array}
    if tag in nested:
        position, value = nested[tag](data, start, depth + 1, problems, where)
    elif tag == b"T":
        position = start + _TIMESTAMP_BYTES
        _check(position, data)
        value = _timestamp(bytes(data[start:position]), problems, where)
    else:
        # Strings and byte arrays run as long as their length says; any other value fits in 9.
        stop = end if tag in _SIZED else min(end, start + 9)
        consumed, value = decode.TABLE_MAPPING[tag](bytes(data[start:stop]))
        position = start + consumed
    if position > end:
        raise ValueError("a value runs past the end of its table")
    return position, value
