"""The JSON Schema and TypeScript generated from the models, and the copies in docs/."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from consumer import schema
from consumer.cli import main
from consumer.errors import InvalidEventError
from consumer.events import Event, parse_event
from consumer.rules import (
    CREATED_AT_PATTERN,
    MAX_NUMBER,
    METADATA_TEXT_PATTERN,
    RULES_NO_SCHEMA_CAN_STATE,
    TEXT_PATTERN,
    UUID_PATTERN,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RECEIVED_AT = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
TASK = "0b6f1c1e-3c1a-4d57-9a0e-2f4c8e1d7a10"


def ev(**fields: object) -> dict[str, object]:
    """A valid event, with `fields` replacing or adding fields; a value of ... drops the field."""
    body: dict[str, object] = {"task_id": TASK, "context_type": "agent_turn", "content": "x"}
    body.update(fields)
    return {key: value for key, value in body.items() if value is not ...}


def nested(levels: int) -> object:
    """Objects and arrays alternating, `levels` deep."""
    value: object = 1
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


# Bodies on both sides of every rule the schema states. The published schema and the consumer
# must give each the same verdict.
CORPUS: list[tuple[str, object]] = [
    ("minimal", ev()),
    (
        "every field",
        ev(
            id=str(uuid.UUID(int=2)),
            workspace_id=None,
            session_id=TASK.upper(),
            context_type="chat_message",
            content="hi \N{GRINNING FACE}",
            metadata='{"original": "string form"}',
            created_at="2024-11-26T10:15:00.123+00:00",
            a_newer_field=[1, {"x": None}],
        ),
    ),
    ("ignored field with NUL and lone surrogate", ev(note="\x00\ud83d", more={"\ud800": 1})),
    ("content NUL", ev(content="a\x00b")),
    ("content lone high surrogate", ev(content="ab\ud83d")),
    ("content lone low surrogate", ev(content="\ude00ab")),
    ("content reversed pair", ev(content="\ude00\ud83d")),
    ("content 65,536 emoji", ev(content="\N{GRINNING FACE}" * 65_536)),
    ("content 65,537 characters", ev(content="a" * 65_537)),
    ("content empty", ev(content="")),
    ("content a number", ev(content=5)),
    ("content missing", ev(content=...)),
    ("metadata NUL value", ev(metadata={"a": "\x00"})),
    ("metadata NUL key", ev(metadata={"\x00": 1})),
    ("metadata deep NUL", ev(metadata={"a": [{"b": ["x\x00"]}]})),
    ("metadata lone surrogate value", ev(metadata={"a": "\ud83d"})),
    ("metadata lone surrogate key", ev(metadata={"k\udfff": 1})),
    ("metadata backslash-u0000 text", ev(metadata={"a": "\\u0000"})),
    ("metadata 64 levels", ev(metadata={"k": nested(63)})),
    ("metadata largest double", ev(metadata={"n": MAX_NUMBER, "m": -MAX_NUMBER})),
    ("metadata integer over a double", ev(metadata={"n": 2 * 10**308})),
    ("metadata a list", ev(metadata=[1])),
    ("metadata a number", ev(metadata=5)),
    ("metadata string: exit 0", ev(metadata="exit 0")),
    ("metadata string: [1]", ev(metadata="[1]")),
    ("metadata string: empty", ev(metadata="")),
    ("metadata string: JSON whitespace", ev(metadata=' \t{"a": 1}\r\n')),
    ("metadata string: form feed", ev(metadata='\f{"a": 1}')),
    ("metadata string: trailing newline", ev(metadata='{"a": 1}\n')),
    ("metadata string: escaped NUL", ev(metadata='{"a": "\\u0000"}')),
    ("metadata string: escaped backslash, u0000", ev(metadata='{"a": "\\\\u0000"}')),
    ("metadata string: escaped lone surrogate", ev(metadata='{"a": "\\ud83d"}')),
    ("metadata string: escaped pair", ev(metadata='{"a": "\\uD83D\\uDE00"}')),
    ("metadata string: raw lone surrogate", ev(metadata='{"a": "\ud83d"}')),
    ("metadata string: raw NUL", ev(metadata='{"a": "\x00"}')),
    ("created_at Z", ev(created_at="2024-12-31T08:30:00Z")),
    ("created_at z and t", ev(created_at="2024-12-31t08:30:00z")),
    ("created_at space", ev(created_at="2024-12-31 08:30:00+05:30")),
    ("created_at +0000", ev(created_at="2024-12-31T08:30:00+0000")),
    ("created_at +00", ev(created_at="2024-12-31T08:30:00+00")),
    ("created_at no offset", ev(created_at="2024-12-31T08:30:00")),
    ("created_at 29 February 2024", ev(created_at="2024-02-29T08:30:00Z")),
    ("created_at 29 February 2023", ev(created_at="2023-02-29T08:30:00Z")),
    ("created_at 29 February 1900", ev(created_at="1900-02-29T08:30:00Z")),
    ("created_at 29 February 2000", ev(created_at="2000-02-29T08:30:00Z")),
    ("created_at 31 April", ev(created_at="2024-04-31T08:30:00Z")),
    ("created_at leap second", ev(created_at="2016-12-31T23:59:60Z")),
    ("created_at year 0", ev(created_at="0000-01-01T00:00:00Z")),
    ("created_at final newline", ev(created_at="2024-12-31T08:30:00Z\n")),
    ("created_at seconds since 1970", ev(created_at=1735633800)),
    ("task_id upper case", ev(task_id=TASK.upper())),
    ("task_id without hyphens", ev(task_id=TASK.replace("-", ""))),
    ("task_id braced", ev(task_id="{" + TASK + "}")),
    ("task_id urn", ev(task_id="urn:uuid:" + TASK)),
    ("task_id final newline", ev(task_id=TASK + "\n")),
    ("task_id null", ev(task_id=None)),
    ("task_id missing", ev(task_id=...)),
    ("id moved hyphen", ev(id=TASK[:7] + "-" + TASK[7] + TASK[9:])),
    ("context_type unknown", ev(context_type="gossip")),
    ("body an array", [ev()]),
    ("body a string", "x"),
]

# Bodies the consumer refuses and the schema accepts, by the rule they break: the documented
# list, RULES_NO_SCHEMA_CAN_STATE, numbered from 1.
DOCUMENTED: list[tuple[str, object, int, str]] = [
    ("created_at an hour ahead", ev(created_at="2025-01-01T13:00:00Z"), 2, "in the future"),
    ("metadata 65,537 bytes", ev(metadata={"k": "x" * 65_529}), 3, "65537 bytes"),
    ("body over 1 MiB", ev(padding="x" * (1 << 20)), 3, "over the 1048576-byte limit"),
    ("metadata string: two objects", ev(metadata="{} {}"), 4, "does not hold JSON"),
    ("metadata string: NaN", ev(metadata='{"n": NaN}'), 4, "NaN"),
    ("metadata string: raw tab in a string", ev(metadata='{"a": "\t"}'), 4, "does not hold JSON"),
    ("metadata 65 levels", ev(metadata={"k": nested(64)}), 5, "nested 65 levels deep"),
    ("metadata string: 65 levels", ev(metadata=json.dumps({"k": nested(64)})), 5, "nested 65"),
    ("ignored field 201 levels", ev(deep=nested(201)), 5, "over the 200-level limit"),
]


def as_body(value: object) -> bytes:
    r"""A JSON body: ASCII, with a lone surrogate written as JavaScript writes it (\ud83d)."""
    return json.dumps(value, ensure_ascii=True).encode("ascii")


def consumer_verdict(body: bytes) -> str | None:
    """None when the consumer accepts the body, else its error (code: detail)."""
    try:
        parse_event(body, message_id=None, received_at=RECEIVED_AT)
    except InvalidEventError as error:
        return str(error)
    return None


def python_validator() -> Any:  # noqa: ANN401  # jsonschema ships no types
    """Python's jsonschema on the published schema, formats checked."""
    published = json.loads((DOCS / "event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator
    return validator(published, format_checker=validator.FORMAT_CHECKER)


class TestCommittedCopies:
    """docs/ holds exactly what the code generates."""

    def test_json_schema_file_is_current(self) -> None:
        """docs/event.schema.json matches the model."""
        committed = (DOCS / "event.schema.json").read_text()
        assert committed == schema.event_json_schema_text(), (
            "docs/event.schema.json is stale: run `task-history schema > docs/event.schema.json`"
        )

    def test_typescript_file_is_current(self) -> None:
        """docs/types.ts matches the models."""
        committed = (DOCS / "types.ts").read_text()
        assert committed == schema.typescript(), (
            "docs/types.ts is stale: run `task-history schema --typescript > docs/types.ts`"
        )


class TestJsonSchema:
    """The event's JSON Schema."""

    def test_shape(self) -> None:
        """It declares its dialect, requires the three fields, and lists the six types."""
        generated = schema.event_json_schema()
        assert generated["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert generated["title"] == "Task build history event"
        assert generated["required"] == ["task_id", "context_type", "content"]
        assert generated["$defs"]["ContextType"]["enum"] == [
            "chat_message", "execution_step", "agent_turn",
            "setup_complete", "error", "status_change",
        ]  # fmt: skip
        assert generated["properties"]["content"]["maxLength"] == 65_536

    def test_metadata_may_be_a_string(self) -> None:
        """The original string metadata is part of the schema, beside the object and null."""
        options = schema.event_json_schema()["properties"]["metadata"]["anyOf"]
        assert options[0] == {"$ref": "#/$defs/JsonObject"}
        assert options[1]["type"] == "string"
        assert options[1]["pattern"] == METADATA_TEXT_PATTERN
        assert options[2] == {"type": "null"}

    def test_patterns(self) -> None:
        """The consumer's own patterns are the schema's."""
        generated = schema.event_json_schema()
        properties = generated["properties"]
        assert properties["content"]["pattern"] == TEXT_PATTERN
        assert properties["task_id"]["pattern"] == UUID_PATTERN
        assert properties["task_id"]["format"] == "uuid"
        for name in ("id", "workspace_id", "session_id"):
            assert properties[name]["anyOf"][0] == {
                "type": "string",
                "format": "uuid",
                "pattern": UUID_PATTERN,
            }
        assert properties["created_at"]["anyOf"][0] == {
            "type": "string",
            "pattern": CREATED_AT_PATTERN,
        }
        json_object = generated["$defs"]["JsonObject"]
        assert json_object["propertyNames"] == {"pattern": TEXT_PATTERN}
        assert {"type": "string", "pattern": TEXT_PATTERN} in generated["$defs"]["JsonValue"][
            "anyOf"
        ]

    def test_no_date_time_format(self) -> None:
        """created_at has no `format: date-time`: rfc3339-validator refuses a space separator."""
        assert "date-time" not in schema.event_json_schema_text()

    def test_description_lists_what_no_schema_can_state(self) -> None:
        """The schema's description carries the documented list, item by item."""
        description = schema.event_json_schema()["description"]
        for number, rule in enumerate(RULES_NO_SCHEMA_CAN_STATE, 1):
            assert f"({number}) {rule}" in description

    def test_the_publishing_guide_lists_them_too(self) -> None:
        """The publishing guide's section on the JSON Schema carries the same list."""
        guide = (ROOT / "docs" / "publishing.md").read_text()
        start = guide.index("## The JSON Schema, and what it can't check")
        section = guide[start : guide.index("\n## ", start + 1)]
        for rule in RULES_NO_SCHEMA_CAN_STATE:
            assert " ".join(rule.split()) in " ".join(section.split()), rule

    @pytest.mark.parametrize(
        "pattern", [TEXT_PATTERN, UUID_PATTERN, CREATED_AT_PATTERN, METADATA_TEXT_PATTERN]
    )
    def test_patterns_ignore_a_final_newline_trap(self, pattern: str) -> None:
        """Python's `$` matches before a final newline; the patterns end where the text ends."""
        assert pattern.endswith("$(?!\\n)")

    def test_command_prints_it(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`task-history schema` prints the schema as JSON."""
        assert main(["schema"]) == 0
        assert json.loads(capsys.readouterr().out) == schema.event_json_schema()


class TestTypeScript:
    """The three TypeScript types: the context type, a stored entry, an event."""

    def test_the_three_types(self) -> None:
        """The context type union, the stored entry's nine fields, and the event."""
        text = schema.typescript()
        assert (
            'export type TaskBuildHistoryContextType =\n  | "chat_message"\n  | "execution_step"'
            in text
        )
        entry = re.search(r"export interface TaskBuildHistoryEntry \{(.*?)\n\}", text, re.DOTALL)
        assert entry is not None
        fields = re.findall(r"^  (\w+\??): (.*);$", entry.group(1), re.MULTILINE)
        assert fields == [
            ("id", "string"),
            ("task_id", "string"),
            ("workspace_id", "string | null"),
            ("session_id", "string | null"),
            ("context_type", "TaskBuildHistoryContextType"),
            ("content", "string"),
            ("metadata", "Record<string, unknown> | null"),
            ("created_at", "string"),
            ("expires_at", "string"),
        ]
        event = re.search(r"export interface CreateTaskBuildHistory \{(.*?)\n\}", text, re.DOTALL)
        assert event is not None
        assert dict(re.findall(r"^  (\w+\??): (.*);$", event.group(1), re.MULTILINE)) == {
            "id?": "string | null",
            "task_id": "string",
            "workspace_id?": "string | null",
            "session_id?": "string | null",
            "context_type": "TaskBuildHistoryContextType",
            "content": "string",
            "metadata?": "Record<string, unknown> | string | null",
            "created_at?": "string | null",
        }

    def test_entry_is_not_the_original_type(self) -> None:
        """The entry as returned has its own name; the original type keeps its string metadata."""
        text = schema.typescript()
        original = re.search(r"export interface TaskBuildHistory \{(.*?)\n\}", text, re.DOTALL)
        returned = re.search(r"export interface TaskBuildHistoryEntry \{(.*?)\n\}", text, re.DOTALL)
        assert original is not None
        assert returned is not None
        assert "  metadata: string | null;" in original.group(1)
        assert "  metadata: Record<string, unknown> | null;" in returned.group(1)
        assert "JSON.stringify(entry.metadata)" in text
        assert "seed" not in text.lower()

    @pytest.mark.parametrize(
        ("json_schema", "expected"),
        [
            ({"type": "integer"}, "number"),
            ({"type": "array", "items": {"type": "boolean"}}, "Array<boolean>"),
            ({"enum": ["a", "b"]}, '"a" | "b"'),
            ({"anyOf": [{"type": "string"}, {"type": "string", "format": "uuid"}]}, "string"),
            ({}, "unknown"),
        ],
    )
    def test_type_mapping(self, json_schema: dict[str, object], expected: str) -> None:
        """JSON Schema types map to their TypeScript equivalents; duplicates collapse."""
        assert schema.ts_type(json_schema, {}) == expected

    def test_command_prints_it(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`task-history schema --typescript` prints the same text."""
        assert main(["schema", "--typescript"]) == 0
        assert capsys.readouterr().out == schema.typescript()


class TestSchemaAgreesWithTheModel:
    """The JSON Schema is valid JSON Schema, and judges events as the model does."""

    def test_is_valid_under_its_dialect(self) -> None:
        """The schema passes the draft 2020-12 metaschema."""
        jsonschema.Draft202012Validator.check_schema(schema.event_json_schema())

    @pytest.mark.parametrize(("label", "body"), CORPUS, ids=[label for label, _ in CORPUS])
    def test_same_verdict_as_the_consumer(self, label: str, body: object) -> None:
        """Python's jsonschema and the consumer agree on every body of the corpus."""
        valid = python_validator().is_valid(body)
        refusal = consumer_verdict(as_body(body))
        assert valid is (refusal is None), f"{label}: schema valid={valid}, consumer: {refusal}"

    @pytest.mark.parametrize(("label", "body"), CORPUS, ids=[label for label, _ in CORPUS])
    def test_model_agrees_too(self, label: str, body: object) -> None:
        """The model, given the parsed body, agrees with the consumer."""
        try:
            Event.model_validate(json.loads(as_body(body)))
        except ValidationError:
            accepted = False
        else:
            accepted = True
        refusal = consumer_verdict(as_body(body))
        if refusal is None or "in the future" not in refusal:
            assert accepted is (refusal is None), label

    def test_corpus_has_both_verdicts(self) -> None:
        """The corpus holds bodies accepted and refused, so agreement means something."""
        verdicts = [consumer_verdict(as_body(body)) is None for _, body in CORPUS]
        assert 15 < sum(verdicts) < len(verdicts) - 30

    @pytest.mark.parametrize(
        ("label", "body", "rule", "detail"), DOCUMENTED, ids=[case[0] for case in DOCUMENTED]
    )
    def test_documented_disagreements(
        self, label: str, body: object, rule: int, detail: str
    ) -> None:
        """Only the documented rules part them: the schema accepts, the consumer refuses."""
        assert 1 <= rule <= len(RULES_NO_SCHEMA_CAN_STATE)
        assert python_validator().is_valid(body), label
        refusal = consumer_verdict(as_body(body))
        assert refusal is not None, label
        assert detail in refusal, refusal
