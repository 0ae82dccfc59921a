"""The published JSON Schema, as ajv and Python's jsonschema judge it, agrees with the consumer.

Hypothesis generates event bodies, valid ones and ones that miss a rule by a little, from both
sides of every rule. Each body's verdict from docs/event.schema.json, judged by (a) Python's
jsonschema with its format checker and (b) ajv 8 with ajv-formats under Node, must equal the
consumer's (`parse_event`), except for bodies that break a rule of the documented list
(`consumer.events.RULES_NO_SCHEMA_CAN_STATE`), which `documented_rule` picks out by the rule's
own terms: for those the consumer must refuse, whatever the schema says.

Generation is derandomized and uses no example database, so every run judges the same bodies.
JavaScript reads every JSON number as a double, so an integer a hair above the largest double
(which it rounds down to it) would pass ajv only; none is generated.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consumer.rules import (
    CREATED_AT_PATTERN,
    MAX_BODY_BYTES,
    MAX_CLOCK_SKEW,
    MAX_FIELD_DEPTH,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_NUMBER,
    METADATA_TEXT_PATTERN,
    RULES_NO_SCHEMA_CAN_STATE,
)
from tests.unit.test_events import OTHER_OFFSETS, RFC3339_OFFSETS, rfc3339_like
from tests.unit.test_schema import (
    CORPUS,
    DOCS,
    DOCUMENTED,
    RECEIVED_AT,
    as_body,
    consumer_verdict,
    python_validator,
)

# How many bodies hypothesis generates: fixed, so every run judges the same ones.
EXAMPLES = 3_000
SCHEMA = DOCS / "event.schema.json"
NODE_SECONDS = 300

CONTEXT_TYPES = [
    "chat_message",
    "execution_step",
    "agent_turn",
    "setup_complete",
    "error",
    "status_change",
]
UUID_FIELDS = ["id", "task_id", "workspace_id", "session_id"]
MISSING = object()  # a mutation's value that drops the field
EMOJI = "\N{GRINNING FACE}"
# Unpaired surrogates as JavaScript leaves them: the halves of an emoji, alone or misordered.
HALVES = ["\ud83d", "\ude00", "\ud800", "\udfff", "\ude00\ud83d"]


# --- What generated bodies are made of -------------------------------------------------------

uuids = st.uuids().map(str)
canonical_uuid = st.one_of(uuids, uuids.map(str.upper))
# Characters a field may hold: any but NUL and surrogates (which hypothesis draws now and then).
GOOD_CHARACTERS = st.characters(codec="utf-8", exclude_characters="\x00")
good_text = st.text(GOOD_CHARACTERS, max_size=20)
# Any text, NUL and unpaired surrogates included.
any_text = st.one_of(
    good_text,
    st.lists(st.one_of(st.characters(), st.sampled_from(["\x00", *HALVES])), max_size=8).map(
        "".join
    ),
)


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """JSON values whose keys and strings come from `text`; numbers that a double holds."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)
        ),
        max_leaves=12,
    )


good_object = st.dictionaries(good_text, json_values(good_text), max_size=5)
past_timestamp = st.builds(
    lambda moment, separator, offset: (
        moment.replace(tzinfo=offset).isoformat(sep=separator).replace("+00:00", "Z")
    ),
    st.datetimes(datetime(1, 1, 2), datetime(2024, 12, 30)),  # noqa: DTZ001  # the offset is added
    st.sampled_from(["T", "t", " "]),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
)


def string_form(obj: dict[str, Any], *, ascii_only: bool, padding: str = "") -> str:
    """`obj` in the original string form."""
    return padding + json.dumps(obj, ensure_ascii=ascii_only) + padding


good_metadata = st.one_of(
    st.none(),
    good_object,
    st.builds(
        string_form,
        good_object,
        ascii_only=st.booleans(),
        padding=st.sampled_from(["", " ", "\n", " \t\r\n"]),
    ),
)


OPTIONAL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(st.none(), canonical_uuid),
    "workspace_id": st.one_of(st.none(), canonical_uuid),
    "session_id": st.one_of(st.none(), canonical_uuid),
    "metadata": good_metadata,
    "created_at": st.one_of(st.none(), past_timestamp),
    "a_newer_field": json_values(any_text),
}
good_content = st.text(GOOD_CHARACTERS, min_size=1)


@st.composite
def valid_body(draw: st.DrawFn) -> dict[str, Any]:
    """A body the consumer accepts: the required fields, and some of the optional ones."""
    body: dict[str, Any] = {
        "task_id": draw(canonical_uuid),
        "context_type": draw(st.sampled_from(CONTEXT_TYPES)),
        "content": draw(good_content),
    }
    for name in sorted(draw(st.sets(st.sampled_from(sorted(OPTIONAL_FIELDS))))):
        body[name] = draw(OPTIONAL_FIELDS[name])
    return body


def nested(levels: int, *, objects: bool) -> Any:  # noqa: ANN401  # any JSON value
    """`levels` of arrays, or of objects and arrays alternating."""
    value: Any = "leaf"
    for level in range(levels):
        value = {"k": value} if objects and level % 2 else [value]
    return value


def deep_metadata(levels: int, *, objects: bool) -> dict[str, Any]:
    """A metadata object `levels` deep, itself level 1."""
    return {"k": nested(levels - 1, objects=objects)}


def with_text_inside(text: str) -> st.SearchStrategy[dict[str, Any]]:
    """Metadata objects holding `text` as a key or a string, at some depth."""
    return st.builds(
        lambda depth, as_key: (
            deep_metadata(depth, objects=True) | ({text: 1} if as_key else {"v": [text]})
        ),
        st.integers(1, 5),
        st.booleans(),
    )


def uuid_spellings(value: str) -> list[str]:
    """Other spellings of a canonical UUID, and near misses."""
    hex32 = value.replace("-", "")
    return [
        value.upper(),
        value[:8] + value[8:].upper(),
        hex32,
        "{" + value + "}",
        "urn:uuid:" + value,
        value + "\n",
        " " + value,
        value[:-1],
        value + "0",
        value[:-1] + "g",
        value[:7] + "-" + value[7] + value[9:],
        value.replace("-", "_"),
        "",
    ]


# --- Mutations: each a strategy of (label, field, value) -------------------------------------

Mutation = tuple[str, str, Any]
Example = tuple[list[str], Any]


def mutation(label: str, field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Mutation]:
    """Set `field` to one of `values`, labelled for the report."""
    return values.map(lambda value: (label, field, value))


uuid_mutations: list[st.SearchStrategy[Mutation]] = [
    *[
        mutation(
            f"{field} spelled otherwise",
            field,
            uuids.flatmap(lambda value: st.sampled_from(uuid_spellings(value))),
        )
        for field in UUID_FIELDS
    ],
    *[
        mutation(f"{field} not a string", field, st.sampled_from([42, [], {}, True]))
        for field in UUID_FIELDS
    ],
    mutation("task_id null", "task_id", st.none()),
]
content_mutations: list[st.SearchStrategy[Mutation]] = [
    mutation(
        "content with NUL or unpaired surrogate",
        "content",
        st.builds(
            lambda head, bad, tail: head + bad + tail,
            good_text,
            st.sampled_from(["\x00", *HALVES]),
            good_text,
        ),
    ),
    mutation(
        "content cut by JavaScript's slice", "content", st.builds(lambda t: t + EMOJI[0], good_text)
    ),
    mutation("content with an emoji", "content", st.builds(lambda t: t + EMOJI, good_text)),
    mutation(
        "content around 65,536 characters",
        "content",
        st.builds(
            lambda size, char: char * size,
            st.sampled_from([65_535, 65_536, 65_537]),
            st.sampled_from(["x", EMOJI, "é"]),
        ),
    ),
    mutation("content empty", "content", st.just("")),
    mutation("content not a string", "content", st.sampled_from([5, None, ["a"], {"a": 1}])),
    mutation("content missing", "content", st.just(MISSING)),
]
metadata_mutations: list[st.SearchStrategy[Mutation]] = [
    mutation(
        "metadata with NUL or unpaired surrogate",
        "metadata",
        st.sampled_from(["\x00", "a\x00", *HALVES, "x" + EMOJI[0]]).flatmap(with_text_inside),
    ),
    mutation(
        "metadata string form with NUL or unpaired surrogate",
        "metadata",
        st.builds(
            string_form,
            st.sampled_from(["\x00", *HALVES]).flatmap(with_text_inside),
            ascii_only=st.booleans(),
        ),
    ),
    mutation(
        "metadata string form with escapes",
        "metadata",
        st.sampled_from(
            [
                '{"a": "\\\\u0000"}',
                '{"a": "\\\\\\u0000"}',
                '{"a": "\\uD83D\\uDE00"}',
                '{"a": "\\ud83d\\u0041"}',
                '{"a": "\\uDE00"}',
                '{"\\u0000": 1}',
                '{"a": "\\u0041\\u00e9"}',
                '{"a": "\\x"}',
                '{"a": "\\/\\b\\f\\n\\r\\t\\"\\\\"}',
            ]
        ),
    ),
    mutation(
        "metadata string form, not an object",
        "metadata",
        st.sampled_from(
            ["exit 0", "[1]", "", " ", "null", '"x"', "1", "true", "{", "}", "{} {}", "{}}", "{{}"]
        ),
    ),
    mutation(
        "metadata string form, whitespace around",
        "metadata",
        st.builds(
            string_form,
            good_object,
            ascii_only=st.booleans(),
            padding=st.sampled_from(["\f", "\v", "\u00a0", "\u2028", "\n\n", " \t"]),
        ),
    ),
    mutation(
        "metadata string form, not JSON inside",
        "metadata",
        st.sampled_from(['{"n": NaN}', '{"n": Infinity}', '{"a": "\t"}', "{'a': 1}", '{"a": 1,}']),
    ),
    mutation(
        "metadata with a number at the edge of a double",
        "metadata",
        st.sampled_from(
            [MAX_NUMBER, -MAX_NUMBER, int(MAX_NUMBER), 10**308, 2 * 10**308, -(10**309), 10**400]
        ).map(lambda n: {"n": [n]}),
    ),
    mutation(
        "metadata string form with a huge number",
        "metadata",
        st.sampled_from(['{"n": 1e400}', '{"n": -2e308}', '{"n": 1.7976931348623157e308}']),
    ),
    mutation(
        "metadata nested around the limit",
        "metadata",
        st.builds(
            deep_metadata,
            st.sampled_from([63, 64, 65, 66, 100, 199, 200, 201, 250]),
            objects=st.booleans(),
        ),
    ),
    mutation(
        "metadata string form nested around the limit",
        "metadata",
        st.builds(
            lambda levels, objects: json.dumps(deep_metadata(levels, objects=objects)),
            st.sampled_from([63, 64, 65, 66, 300]),
            st.booleans(),
        ),
    ),
    mutation(
        "metadata around 65,536 bytes",
        "metadata",
        st.builds(
            lambda extra, char: {
                "k": char * ((MAX_METADATA_BYTES - 8) // len(char.encode()) + extra)
            },
            st.sampled_from([-1, 0, 1]),
            st.sampled_from(["x", "é"]),
        ),
    ),
    mutation("metadata not an object", "metadata", st.sampled_from([5, [1], True, [{}]])),
]
created_at_mutations: list[st.SearchStrategy[Mutation]] = [
    mutation("created_at RFC 3339-like", "created_at", rfc3339_like(RFC3339_OFFSETS)),
    mutation("created_at with offsets RFC 3339 lacks", "created_at", rfc3339_like(OTHER_OFFSETS)),
    mutation(
        "created_at with a final newline or padding",
        "created_at",
        past_timestamp.flatmap(
            lambda t: st.sampled_from([t + "\n", " " + t, t + " ", "\n" + t, t.replace(":", "", 1)])
        ),
    ),
    mutation("created_at not a string", "created_at", st.sampled_from([1735633800, 1.5, [], {}])),
    mutation(
        "created_at around 5 minutes ahead",
        "created_at",
        st.builds(
            lambda ahead, minutes, separator: (
                (RECEIVED_AT + ahead)
                .astimezone(timezone(timedelta(minutes=minutes)))
                .isoformat(sep=separator)
            ),
            st.sampled_from(
                [
                    timedelta(seconds=-1),
                    MAX_CLOCK_SKEW - timedelta(microseconds=1),
                    MAX_CLOCK_SKEW,
                    MAX_CLOCK_SKEW + timedelta(microseconds=1),
                    MAX_CLOCK_SKEW + timedelta(seconds=1),
                    timedelta(days=400),
                ]
            ),
            st.sampled_from([0, 330, -600, 23 * 60 + 59]),
            st.sampled_from(["T", " "]),
        ),
    ),
]
other_mutations: list[st.SearchStrategy[Mutation]] = [
    mutation(
        "context_type not one of six",
        "context_type",
        st.sampled_from(["CHAT_MESSAGE", "chat", "", "agent_turn ", None, 1]),
    ),
    mutation("task_id missing", "task_id", st.just(MISSING)),
    mutation("context_type missing", "context_type", st.just(MISSING)),
    mutation("unknown field, any value", "x_extra", json_values(any_text)),
    mutation(
        "unknown field nested around the limit",
        "x_deep",
        st.builds(nested, st.sampled_from([199, 200, 201, 202]), objects=st.booleans()),
    ),
    mutation(
        "body around 1 MiB",
        "x_padding",
        st.sampled_from([-1, 0, 1]),
    ),
    mutation(
        "body not an object",
        "",
        st.sampled_from([lambda body: [body], lambda _: "x", lambda _: 1, lambda _: None]),
    ),
]
MUTATIONS = (
    uuid_mutations + content_mutations + metadata_mutations + created_at_mutations + other_mutations
)


def pad_to(body: dict[str, Any], extra: int) -> None:
    """Grow `body` with a padding field to 1 MiB plus `extra` bytes."""
    body["x_padding"] = ""
    size = len(as_body(body))
    body["x_padding"] = "x" * (MAX_BODY_BYTES - size + extra)


def build(data: st.DataObject, first: st.SearchStrategy[Mutation] | None) -> Example:
    """A valid body, broken by `first` (when given) and now and then by a second mutation."""
    body: Any = data.draw(valid_body())
    planned = [] if first is None else [first]
    if first is not None and data.draw(st.booleans()):
        planned.append(data.draw(st.sampled_from(MUTATIONS)))
    drawn = [data.draw(strategy) for strategy in planned]
    # Fields first, then the padding (so the size is the body's), then the whole body.
    drawn.sort(key=lambda change: (change[1] == "", change[1] == "x_padding"))
    for _, field, value in drawn:
        if value is MISSING:
            body.pop(field, None)
        elif field == "x_padding":
            pad_to(body, value)
        elif field == "":
            body = value(body)
        else:
            body[field] = value
    labels = [label for label, _, _ in drawn]
    return labels or ["valid"], body


def collect(first: st.SearchStrategy[Mutation] | None, count: int) -> list[Example]:
    """`count` bodies built around the mutation `first`."""
    made: list[Example] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        made.append(build(data, first))

    draw()
    return made


def generate(count: int) -> list[Example]:
    """At least `count` bodies, the same ones on every run: each mutation in turn, and valid.

    Hypothesis favours the first of a choice (sampled_from, one_of), so the mutations are
    taken in turn, each for an equal share of the bodies, and hypothesis draws the values.
    """
    plan: list[st.SearchStrategy[Mutation] | None] = [None, *MUTATIONS]
    share = -(-count // len(plan))
    return [example for first in plan for example in collect(first, share)]


# --- The documented list, by its own terms ---------------------------------------------------

CREATED_AT = re.compile(CREATED_AT_PATTERN)
METADATA_TEXT = re.compile(METADATA_TEXT_PATTERN)


def depth(value: Any) -> int:  # noqa: ANN401  # any JSON value
    """Levels of objects and arrays: 0 for a scalar, 1 for {} or []."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def numbers_out_of_range(value: Any) -> bool:  # noqa: ANN401  # any JSON value
    """Whether a JSON value holds a number beyond the largest double (or NaN, an infinity)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif beyond_a_double(item):
            return True
    return False


def beyond_a_double(item: object) -> bool:
    """Whether a scalar is a number no double holds (NaN and the infinities included)."""
    if isinstance(item, float):
        return not math.isfinite(item)
    return isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_NUMBER


def instant(text: str) -> datetime:
    """The instant of a created_at the pattern accepts (fractions cut to microseconds)."""
    date, time = text[:10], text[11:]
    offset = timedelta(0)
    if time[-1] in "Zz":
        time = time[:-1]
    else:
        sign = -1 if time[-6] == "-" else 1
        offset = sign * timedelta(hours=int(time[-5:-3]), minutes=int(time[-2:]))
        time = time[:-6]
    local = datetime.strptime(f"{date} {time[:8]}", "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007
    microseconds = int((time[9:] + "000000")[:6])
    return local.replace(tzinfo=UTC, microsecond=microseconds) - offset


def strict_json(text: str) -> Any:  # noqa: ANN401  # any JSON value
    """`text` parsed as JSON (no NaN, no Infinity), or MISSING when it isn't JSON."""

    def refuse(constant: str) -> Any:  # noqa: ANN401
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return MISSING


def documented_rule(instance: Any, body: bytes) -> tuple[int, str] | None:  # noqa: ANN401
    """The rule of RULES_NO_SCHEMA_CAN_STATE (numbered from 1) the body breaks, if any."""
    if len(body) > MAX_BODY_BYTES:
        return 3, "body over 1 MiB"
    if not isinstance(instance, dict):
        return None
    created_at = instance.get("created_at")
    if (
        isinstance(created_at, str)
        and CREATED_AT.search(created_at)
        and instant(created_at) - RECEIVED_AT > MAX_CLOCK_SKEW
    ):
        return 2, "created_at more than 5 minutes ahead"
    for name, value in instance.items():
        if name != "metadata" and depth(value) > MAX_FIELD_DEPTH:
            return 5, f"{name} nested over {MAX_FIELD_DEPTH} levels"
    return metadata_rule(instance.get("metadata"))


def metadata_rule(metadata: Any) -> tuple[int, str] | None:  # noqa: ANN401  # any JSON value
    """The documented rule metadata breaks, if any."""
    if isinstance(metadata, str) and METADATA_TEXT.search(metadata):
        held = strict_json(metadata)
        if not isinstance(held, dict):
            return 4, "metadata string form is not a JSON object"
        if numbers_out_of_range(held):
            return 4, "metadata string form holds a number beyond a double"
        metadata = held
    if not isinstance(metadata, dict):
        return None
    if depth(metadata) > MAX_METADATA_DEPTH:
        return 5, f"metadata nested over {MAX_METADATA_DEPTH} levels"
    compact = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(compact.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        return 3, "metadata over 65,536 bytes"
    return None


# --- Judging -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One body and its verdicts: None for valid, else why not."""

    labels: list[str]
    text: bytes
    instance: Any
    documented: tuple[int, str] | None = None
    consumer: str | None = None
    python: str | None = None
    ajv: str | None = None

    def report(self) -> str:
        """The disagreement, readably, on a few lines."""
        shown = self.text.decode("ascii")
        if len(shown) > 400:
            shown = shown[:300] + f" ... ({len(shown)} characters) ... " + shown[-60:]
        return (
            f"- made as: {', '.join(self.labels)}\n"
            f"  body: {shown}\n"
            f"  consumer: {self.consumer or 'valid'}\n"
            f"  jsonschema: {self.python or 'valid'}\n"
            f"  ajv: {self.ajv or 'valid'}"
        )


@contextmanager
def recursion_limit(limit: int) -> Iterator[None]:
    """Room for jsonschema, which recurses a dozen frames per level of a deep body."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def python_verdicts(instances: list[Any]) -> list[str | None]:
    """Python's jsonschema on each instance."""
    validator = python_validator()
    verdicts: list[str | None] = []
    with recursion_limit(20_000):
        for instance in instances:
            error = next(iter(validator.iter_errors(instance)), None)
            where = "/" + "/".join(str(part) for part in error.absolute_path) if error else ""
            verdicts.append(None if error is None else f"{where}: {error.message[:200]}")
    return verdicts


def ajv_verdicts(node_dir: Path, texts: list[bytes], tmp_path: Path) -> list[str | None]:
    """The verdicts of ajv on each body, from one run of Node over them all."""
    lines = tmp_path / "bodies.jsonl"
    lines.write_bytes(b"".join(text + b"\n" for text in texts))
    with lines.open("rb") as stdin:
        done = subprocess.run(
            ["node", str(node_dir / "verdicts.mjs"), str(SCHEMA)],  # noqa: S607  # node from PATH
            stdin=stdin,
            capture_output=True,
            timeout=NODE_SECONDS,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert not done.stderr, done.stderr.decode(errors="replace")[-2000:]  # no strict-mode warning
    verdicts = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(verdicts) == len(texts)
    return [None if v["valid"] else "; ".join(v["errors"])[:300] for v in verdicts]


def judge(cases: list[Case], node_dir: Path, tmp_path: Path) -> None:
    """Fill in every case's verdicts."""
    for case, verdict in zip(
        cases, ajv_verdicts(node_dir, [case.text for case in cases], tmp_path), strict=True
    ):
        case.ajv = verdict
    for case, verdict in zip(
        cases, python_verdicts([case.instance for case in cases]), strict=True
    ):
        case.python = verdict
    for case in cases:
        case.consumer = consumer_verdict(case.text)
        case.documented = documented_rule(case.instance, case.text)


def make_case(labels: list[str], body: Any) -> Case:  # noqa: ANN401  # any JSON value
    """A case from a body as Python holds it; every judge reads the same JSON text."""
    text = as_body(body)
    return Case(labels, text, json.loads(text))


def big_integer(text: str) -> int | Decimal:
    """An integer as jsonschema should see it, even past Python's 4,300-digit limit."""
    return int(text) if len(text) <= 4_300 else Decimal(text)


def raw_case(label: str, text: bytes) -> Case:
    """A case from JSON text that Python's encoder would not write."""
    return Case([label], text, json.loads(text, parse_int=big_integer))


TASK_FIELDS = b'"task_id": "0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10", "context_type": "error"'
HUGE = b"-" + b"9" * 5_000
# Bodies only raw text can hold: integers past 4,300 digits, numbers past a double, keys twice.
RAW_BODIES: list[tuple[str, bytes]] = [
    ("huge integer in an ignored field", b'{%s, "content": "x", "n": %s}' % (TASK_FIELDS, HUGE)),
    (
        "huge integer in metadata",
        b'{%s, "content": "x", "metadata": {"n": %s}}' % (TASK_FIELDS, HUGE),
    ),
    ("1e400 in an ignored field", b'{%s, "content": "x", "n": [1e400]}' % TASK_FIELDS),
    ("1e400 in metadata", b'{%s, "content": "x", "metadata": {"n": 1e400}}' % TASK_FIELDS),
    ("-1e-400 in metadata", b'{%s, "content": "x", "metadata": {"n": -1e-400}}' % TASK_FIELDS),
    ("content twice, valid last", b'{%s, "content": "", "content": "x"}' % TASK_FIELDS),
    ("content twice, invalid last", b'{%s, "content": "x", "content": ""}' % TASK_FIELDS),
    (
        "metadata key twice, valid last",
        b'{%s, "content": "x", "metadata": {"a": "\\u0000", "a": 1}}' % TASK_FIELDS,
    ),
    (
        "metadata key twice, invalid last",
        b'{%s, "content": "x", "metadata": {"a": 1, "a": "\\u0000"}}' % TASK_FIELDS,
    ),
    (
        "lone surrogate in an ignored key",
        b'{%s, "content": "x", "\\ud83d": "\\ude00"}' % TASK_FIELDS,
    ),
    ("escaped pair, upper case", b'{%s, "content": "\\uD83D\\uDE00"}' % TASK_FIELDS),
    (
        "escaped NUL key in metadata",
        b'{%s, "content": "x", "metadata": {"\\u0000": 1}}' % TASK_FIELDS,
    ),
    ("lone surrogate, then a NUL", b'{%s, "content": "\\ud83d\\u0000"}' % TASK_FIELDS),
]


def summary(name: str, cases: list[Case], disagreements: list[Case]) -> str:
    """One paragraph: how many bodies, compared, documented, accepted, and disagreements."""
    documented = Counter(case.documented[0] for case in cases if case.documented)
    compared = [case for case in cases if not case.documented]
    accepted = sum(case.consumer is None for case in compared)
    by_rule = ", ".join(f"rule {rule}: {count}" for rule, count in sorted(documented.items()))
    distinct = len({case.text for case in cases})
    return (
        f"{name}: {len(cases)} bodies ({distinct} distinct); {len(compared)} compared"
        f" ({accepted} valid,"
        f" {len(compared) - accepted} invalid); {sum(documented.values())} under the documented"
        f" list ({by_rule}); {len(disagreements)} disagreements"
    )


def check(cases: list[Case], name: str) -> str:
    """Assert agreement; return the summary."""
    disagreements = [
        case
        for case in cases
        if (case.consumer is None) is not (case.documented is None)
        if case.documented is not None
    ] + [
        case
        for case in cases
        if case.documented is None
        and len({case.consumer is None, case.python is None, case.ajv is None}) > 1
    ]
    line = summary(name, cases, disagreements)
    assert not disagreements, line + ":\n" + "\n".join(case.report() for case in disagreements)
    return line


def test_generated_bodies_agree(
    node_dir: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Every generated body gets one verdict from ajv, jsonschema and the consumer."""
    cases = [make_case(labels, body) for labels, body in generate(EXAMPLES)]
    judge(cases, node_dir, tmp_path)
    line = check(cases, "generated")
    record_property("summary", line)
    compared = [case for case in cases if case.documented is None]
    valid = sum(case.consumer is None for case in compared)
    assert len({case.text for case in cases}) >= 2_000
    assert valid > len(compared) // 5
    assert len(compared) - valid > len(compared) // 5
    rules = Counter(case.documented[0] for case in cases if case.documented)
    # Every rule but the first (there is no database here) is hit, many times.
    assert set(rules) == set(range(2, len(RULES_NO_SCHEMA_CAN_STATE) + 1)), rules
    assert min(rules.values()) >= 10, rules


def test_fixed_corpus_agrees(node_dir: Path, tmp_path: Path) -> None:
    """The unit tests' corpus, judged by ajv too; its documented cases by their rule."""
    cases = [make_case([label], body) for label, body in CORPUS]
    cases += [raw_case(label, text) for label, text in RAW_BODIES]
    documented = [make_case([label], body) for label, body, _, _ in DOCUMENTED]
    judge(cases + documented, node_dir, tmp_path)
    check(cases + documented, "fixed corpus")
    for case, (label, _, rule, _) in zip(documented, DOCUMENTED, strict=True):
        assert case.documented is not None, label
        assert case.documented[0] == rule, (label, case.documented)
        assert case.ajv is None, (label, case.ajv)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("2024-02-29T00:00:00Z", True),
        ("2024-02-29 00:00:00+05:30", True),
        ("2023-02-29T00:00:00Z", False),
        ("2024-12-31T08:30:00+0000", False),
        ("2024-12-31T08:30:00Z\n", False),
        ("2016-12-31T23:59:60Z", False),
    ],
)
def test_ajv_reads_the_patterns_as_python_does(
    node_dir: Path, tmp_path: Path, text: str, *, valid: bool
) -> None:
    """A few created_at values, by name, so a regression reads plainly."""
    body = {
        "task_id": "0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10",
        "context_type": "error",
        "content": "x",
        "created_at": text,
    }
    [verdict] = ajv_verdicts(node_dir, [as_body(body)], tmp_path)
    assert (verdict is None) is valid, verdict
