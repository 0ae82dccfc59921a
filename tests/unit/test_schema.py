"""The JSON Schema and TypeScript generated from the models, and the copies in docs/."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from consumer import schema
from consumer.cli import main
from consumer.events import Event

DOCS = Path(__file__).resolve().parents[2] / "docs"


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
        """The seed's string metadata is part of the schema, beside the object and null."""
        kinds = [
            option["type"]
            for option in schema.event_json_schema()["properties"]["metadata"]["anyOf"]
        ]
        assert kinds == ["object", "string", "null"]

    def test_command_prints_it(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`task-history schema` prints the schema as JSON."""
        assert main(["schema"]) == 0
        assert json.loads(capsys.readouterr().out) == schema.event_json_schema()


class TestTypeScript:
    """The seed's three TypeScript types."""

    def test_the_three_types(self) -> None:
        """The context type union, the stored entry's nine fields, and the event."""
        text = schema.typescript()
        assert (
            'export type TaskBuildHistoryContextType =\n  | "chat_message"\n  | "execution_step"'
            in text
        )
        entry = re.search(r"export interface TaskBuildHistory \{(.*?)\n\}", text, re.DOTALL)
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

    @pytest.mark.parametrize(
        ("event", "valid"),
        [
            ({"task_id": str(uuid.UUID(int=1)), "context_type": "error", "content": "x"}, True),
            (
                {
                    "id": str(uuid.UUID(int=2)),
                    "task_id": str(uuid.UUID(int=1)),
                    "workspace_id": None,
                    "context_type": "chat_message",
                    "content": "hi",
                    "metadata": '{"seed": "string form"}',
                    "created_at": "2026-11-26T10:15:00.123+00:00",
                    "a_newer_field": 1,
                },
                True,
            ),
            ({"task_id": str(uuid.UUID(int=1)), "context_type": "error"}, False),
            ({"task_id": str(uuid.UUID(int=1)), "context_type": "gossip", "content": "x"}, False),
            ({"task_id": str(uuid.UUID(int=1)), "context_type": "error", "content": ""}, False),
            (
                {
                    "task_id": str(uuid.UUID(int=1)),
                    "context_type": "error",
                    "content": "x",
                    "metadata": [1],
                },
                False,
            ),
        ],
    )
    def test_same_verdict_as_the_model(self, event: dict[str, object], *, valid: bool) -> None:
        """An event the model accepts passes the schema; one it refuses fails it."""
        validator = jsonschema.Draft202012Validator(schema.event_json_schema())
        assert validator.is_valid(event) is valid
        try:
            Event.model_validate(event)
        except ValidationError:
            accepted = False
        else:
            accepted = True
        assert accepted is valid
