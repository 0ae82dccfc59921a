"""The event's rules: limits, the patterns the schema publishes, and the JSON checks behind them.

No pydantic here: `consumer.events` applies these rules, `consumer.schema` publishes them.

Every rule a JSON Schema can state is published in docs/event.schema.json: the patterns below
are the schema's own text, and each means the same under Python's `re.search` (as `jsonschema`
runs it) and under ECMA-262 with the `u` flag (as ajv runs it). The rules no schema can state
are `RULES_NO_SCHEMA_CAN_STATE`, which the schema's description and docs/publishing.md repeat.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from typing import Any

MAX_BODY_BYTES = 1 << 20
MAX_CONTENT_CHARS = 65_536
MAX_METADATA_BYTES = 65_536
# Levels of objects and arrays in metadata, the metadata object itself being level 1. The
# table's CHECK constraint refuses an object or array at jsonpath level 64 (level 0 being the
# metadata object): the same limit.
MAX_METADATA_DEPTH = 64
# Levels of objects and arrays in any other field's value (unknown fields included), the value
# itself being level 1: the recursion limit of pydantic's JSON parser, which refuses more.
MAX_FIELD_DEPTH = 200
# The largest number a 64-bit float holds; JSON numbers beyond it would be read as Infinity.
MAX_NUMBER = sys.float_info.max
MAX_CLOCK_SKEW = timedelta(minutes=5)

# The end of the text. `$` alone would also match before a final newline in Python.
_END = r"$(?!\n)"
# Text with no NUL and no unpaired UTF-16 surrogate. Under the `u` flag a surrogate pair is one
# code point, outside the class; Python holds a lone surrogate as one code point, inside it.
TEXT_PATTERN = rf"^[^\u0000\uD800-\uDFFF]*{_END}"
# A UUID in its canonical form, 8-4-4-4-12 hex digits, either case (pydantic alone would also
# take 32 digits without hyphens, braces and `urn:uuid:`).
UUID_PATTERN = (
    rf"^[0-9A-Fa-f]{{8}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{12}}{_END}"
)
# RFC 3339 with an offset, as pydantic reads it: years 0001-9999, real calendar days (29
# February in leap years only), no leap second, any number of fraction digits, T, t or a space
# between date and time, and Z, z or a ±HH:MM offset up to ±23:59.
_YEAR = "(?!0000)[0-9]{4}"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
_OFFSET = "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
CREATED_AT_PATTERN = rf"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)[Tt ]{_TIME}{_OFFSET}{_END}"
# The string form of metadata: JSON text that starts with `{` and ends with `}` (JSON whitespace
# aside), read one character or escape at a time, with no NUL and no unpaired surrogate, raw or
# escaped (\u0000 or a surrogate escape after an even number of backslashes).
_HEX = "[0-9A-Fa-f]"
_JSON_ESCAPE = (
    r'\\(?:["\\/bfnrt]'
    rf"|u(?!0000)(?:[0-9A-Ca-cEeFf]{_HEX}{{3}}|[Dd][0-7]{_HEX}{{2}})"
    rf"|u[Dd][89ABab]{_HEX}{{2}}\\u[Dd][C-Fc-f]{_HEX}{{2}})"
)
_JSON_CHARACTER = r"[^\\\u0000\uD800-\uDFFF]"
METADATA_TEXT_PATTERN = rf"^[ \t\n\r]*\{{(?:{_JSON_CHARACTER}|{_JSON_ESCAPE})*\}}[ \t\n\r]*{_END}"

RULES_NO_SCHEMA_CAN_STATE = (
    "`task_id` names a task that exists (a schema can't see the database).",
    (
        "`created_at` is at most 5 minutes ahead of the consumer's clock, and not older than the"
        " retention (20 days): both depend on when the event arrives."
    ),
    (
        "Sizes in bytes: the body at most 1 MiB, `metadata` at most 65,536 bytes as compact UTF-8"
        " JSON (a schema counts characters, not bytes)."
    ),
    (
        "The `metadata` string form parses as a JSON object that follows the object form's rules"
        " (a pattern checks its ends, its characters and its escapes, but can't parse JSON)."
    ),
    (
        f"Nesting: `metadata` at most {MAX_METADATA_DEPTH} levels of objects and arrays (the"
        f" metadata object is level 1), any other field, unknown ones included, at most"
        f" {MAX_FIELD_DEPTH} (a schema can only bound depth by repeating a definition once per"
        " level)."
    ),
)

UUID_TEXT = re.compile(UUID_PATTERN)
CREATED_AT_TEXT = re.compile(CREATED_AT_PATTERN)
# An escaped NUL in JSON text: \u0000 preceded by an even number of backslashes.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# A number too large for a double has over 308 digits; strings rarely hold as many in a row.
# Mapping digits to "1" and the rest to "0" finds such a run at C speed (a regex is 50x slower).
_DIGIT_MAP = bytes(49 if 48 <= byte <= 57 else 48 for byte in range(256))  # noqa: PLR2004
_LONG_DIGITS = b"1" * 309
# What JSON nests (a tuple: isinstance takes it faster than `dict | list`).
_CONTAINERS = (dict, list)
# JSON text as tokens that matter for nesting: a string (a key when a colon follows), a bracket.
_NESTING_TOKENS = re.compile(r'("[^"\\]*(?:\\[\s\S][^"\\]*)*")(?:[ \t\n\r]*(:))?|[\[\]{}]')
# Python's own limit on the digits of an integer read from text (sys.get_int_max_str_digits).
_INT_DIGITS = 4_300
_NUMBER_RANGE = f"holds NaN, Infinity or a number beyond ±{MAX_NUMBER!r}"


def _json_integer(text: str) -> int | float:
    """A JSON integer, for Python's parser: past 4,300 digits, which `int` refuses, a float.

    Such a number is beyond any double, so it reads as an infinity, as pydantic's parser and
    JavaScript read it: refused in metadata, ignored in a field nobody reads.
    """
    return int(text) if len(text) <= _INT_DIGITS else float(text)


def loads_json(text: str) -> Any:  # noqa: ANN401  # any JSON value
    """JSON text parsed by Python's parser, integers of any length included."""
    return json.loads(text, parse_int=_json_integer)


def text_problem(value: str) -> str | None:
    """What forbids `value` as stored text (a NUL, an unpaired surrogate), or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # only a lone surrogate can't be encoded
            return "contains an unpaired UTF-16 surrogate"
    return None


def json_depth(value: object) -> int:
    """Levels of objects and arrays in a JSON value: 0 for a scalar, 1 for `{}`, and so on."""
    if not isinstance(value, _CONTAINERS):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        stack.extend([(child, level + 1) for child in children if isinstance(child, _CONTAINERS)])
    return deepest


def deeper_than(container: dict[str, Any] | list[Any], levels: int) -> bool:
    """Whether a dict or list nests more than `levels` levels (recursing at most that deep)."""
    if levels == 0:
        return True
    children = container.values() if isinstance(container, dict) else container
    return any(
        isinstance(child, _CONTAINERS) and deeper_than(child, levels - 1) for child in children
    )


def too_deep(depth: int) -> str:
    """The detail for metadata nested `depth` levels, past the limit."""
    return f"nested {depth} levels deep, over the {MAX_METADATA_DEPTH}-level limit"


def text_nesting(text: str) -> tuple[int, dict[str, int]]:
    """The nesting of JSON text, without parsing it: its depth, and each top-level key's.

    A key's depth is that of its value (the value's own object or array being level 1). Text
    that isn't JSON gives some answer; the caller parses it afterwards anyway.
    """
    depth = deepest = 0
    key: str | None = None
    keys: dict[str, int] = {}
    for token in _NESTING_TOKENS.finditer(text):
        if token.group(1) is not None:  # a string
            if depth == 1 and token.group(2):
                key = token.group(1)
            continue
        if token.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if key is not None and depth > 1:
                keys[key] = max(keys.get(key, 0), depth - 1)
        else:
            depth -= 1
    names: dict[str, int] = {}
    for quoted, level in keys.items():
        try:
            names[json.loads(quoted)] = level
        except ValueError:
            names[quoted] = level
    return deepest, names


def big_integer(value: object) -> bool:
    """Whether a JSON value holds an integer that no 64-bit float can hold."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_NUMBER:
            return True
    return False


def metadata_json(metadata: dict[str, Any]) -> str:
    """Metadata as the compact JSON text stored; ValueError says what forbids storing it."""
    try:
        text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or an infinity, which a too large number is read as
        raise ValueError(_NUMBER_RANGE) from None
    except RecursionError:  # only from Python objects: parsed JSON is never this deep here
        raise ValueError(too_deep(json_depth(metadata))) from None
    except TypeError as exc:  # only from Python objects
        raise ValueError(f"holds something that is not JSON ({exc})") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValueError("contains a NUL character")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # only a lone surrogate can't be encoded
        raise ValueError("contains an unpaired UTF-16 surrogate") from None
    # Too deep needs more than MAX_METADATA_DEPTH openers: counting them runs at C speed.
    if text.count("{") + text.count("[") > MAX_METADATA_DEPTH and deeper_than(
        metadata, MAX_METADATA_DEPTH
    ):
        raise ValueError(too_deep(json_depth(metadata)))
    if _LONG_DIGITS in data.translate(_DIGIT_MAP) and big_integer(metadata):
        raise ValueError(_NUMBER_RANGE)
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError(f"{len(data)} bytes serialized, over the {MAX_METADATA_BYTES}-byte limit")
    return text
