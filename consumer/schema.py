"""The event and entry types for other languages: JSON Schema and TypeScript, from the models."""

from __future__ import annotations

import json
from typing import Any

from consumer.entries import HistoryEntry
from consumer.events import Event

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
EVENT_TITLE = "Task build history event"
# The names the original TypeScript definitions gave the three types.
CONTEXT_TYPE_NAME = "TaskBuildHistoryContextType"
ENTRY_NAME = "TaskBuildHistory"
EVENT_NAME = "CreateTaskBuildHistory"
_GENERATED_BY = (
    "// Generated from the pydantic models by `task-history schema --typescript`; do not edit."
)

_METADATA_AS_TEXT = {
    "type": "string",
    "contentMediaType": "application/json",
    "description": "The original form: a string holding a JSON object.",
}


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an event body, from `consumer.events.Event`."""
    schema = Event.model_json_schema()
    # The model turns string metadata (the original form) into an object before validating
    # it, so its own schema shows only the object; a publisher may send either.
    metadata = schema["properties"]["metadata"]
    metadata["anyOf"].insert(1, _METADATA_AS_TEXT)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema, "title": EVENT_TITLE}


def event_json_schema_text() -> str:
    """`event_json_schema()` as the text `task-history schema` prints (and docs/ holds)."""
    return json.dumps(event_json_schema(), indent=2, ensure_ascii=False) + "\n"


def typescript() -> str:
    """TypeScript for the context types, a stored entry and an event, under their original names."""
    entry = HistoryEntry.model_json_schema(mode="serialization")
    event = event_json_schema()
    context_type = entry["$defs"]["ContextType"]
    names = {"#/$defs/ContextType": CONTEXT_TYPE_NAME}
    literals = "".join(f"\n  | {json.dumps(value)}" for value in context_type["enum"])
    blocks = [
        _GENERATED_BY,
        _comment(context_type.get("description"), indent="")
        + f"export type {CONTEXT_TYPE_NAME} ={literals};",
        _interface(ENTRY_NAME, entry, names),
        _interface(EVENT_NAME, event, names),
    ]
    return "\n\n".join(blocks) + "\n"


def _interface(name: str, schema: dict[str, Any], names: dict[str, str]) -> str:
    """One `export interface` from an object schema; a field not required is optional."""
    required = set(schema.get("required", ()))
    lines = [_comment(schema.get("description"), indent="") + f"export interface {name} {{"]
    for field, field_schema in schema["properties"].items():
        optional = "" if field in required else "?"
        lines.append(
            _comment(field_schema.get("description"), indent="  ")
            + f"  {field}{optional}: {ts_type(field_schema, names)};"
        )
    lines.append("}")
    return "\n".join(lines)


def ts_type(schema: dict[str, Any], names: dict[str, str]) -> str:
    """The TypeScript type of a JSON Schema; `names` maps a `$ref` to the type it names."""
    if "$ref" in schema:
        return names[schema["$ref"]]
    if "anyOf" in schema:
        members = [ts_type(member, names) for member in schema["anyOf"]]
        return " | ".join(dict.fromkeys(members))  # the same TypeScript type once
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    scalar = {
        "string": "string",
        "integer": "number",
        "number": "number",
        "boolean": "boolean",
        "null": "null",
        "object": "Record<string, unknown>",
    }
    kind = schema.get("type")
    if kind == "array":
        return f"Array<{ts_type(schema.get('items', {}), names)}>"
    if isinstance(kind, str) and kind in scalar:
        return scalar[kind]
    return "unknown"


def _comment(text: str | None, *, indent: str) -> str:
    """A TSDoc comment line for `text`, or nothing."""
    if not text:
        return ""
    one_line = " ".join(text.split()).replace("*/", "* /")
    return f"{indent}/** {one_line} */\n"
