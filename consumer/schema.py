"""The event and entry types for other languages: JSON Schema and TypeScript, from the models."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from consumer.entries import HistoryEntry
from consumer.events import Event
from consumer.rules import (
    MAX_NUMBER,
    METADATA_TEXT_PATTERN,
    RULES_NO_SCHEMA_CAN_STATE,
    TEXT_PATTERN,
)

_WIDTH = 100  # of a line of TypeScript
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
EVENT_TITLE = "Task build history event"
# The context type and the event keep the names the original TypeScript types gave them. The
# original `TaskBuildHistory` type had `metadata` as a string holding JSON; a stored entry as
# this service returns it has the object, so it has a name of its own.
CONTEXT_TYPE_NAME = "TaskBuildHistoryContextType"
ENTRY_NAME = "TaskBuildHistoryEntry"
EVENT_NAME = "CreateTaskBuildHistory"
ORIGINAL_ENTRY_NAME = "TaskBuildHistory"
_GENERATED_BY = (
    "// Generated from the pydantic models by `task-history schema --typescript`; do not edit.\n"
    f"// Entries read from this service (`task-history show --json`, `export`, the HTTP API) are\n"
    f"// `{ENTRY_NAME}`: `metadata` is the object itself. `{ORIGINAL_ENTRY_NAME}` is the original\n"
    "// type of an entry, whose `metadata` is a string holding JSON:"
    " `JSON.stringify(entry.metadata)`\n"
    "// gives it. Events may send either form."
)
_ENTRY_DESCRIPTION = (
    "One stored entry, its nine fields, as `task-history show --json`, `export` and the HTTP API"
    f" return it. Not the original `{ORIGINAL_ENTRY_NAME}` type: `metadata` is an object here,"
    " not a string holding JSON."
)
_ENTRY_METADATA_DESCRIPTION = (
    "The object itself, or null. The original type had a string holding JSON:"
    " `JSON.stringify(entry.metadata)` gives it."
)
_ORIGINAL_DESCRIPTION = (
    "The original type of a stored entry, with `metadata` as a string holding JSON. This service"
    f" returns `{ENTRY_NAME}` (the object itself): convert one with"
    " `{ ...entry, metadata: entry.metadata === null ? null : JSON.stringify(entry.metadata) }`."
)
_ORIGINAL_METADATA = {
    "anyOf": [{"type": "string"}, {"type": "null"}],
    "description": "A string holding a JSON object, or null.",
}
_EVENT_DESCRIPTION = (
    "One event as published: the JSON body of a message to the history exchange. Validate it"
    " with docs/event.schema.json; its description lists the rules the consumer adds."
)

# JSON values in metadata, at any depth: strings and keys are storable text, numbers fit a
# 64-bit float. (Depth is not bounded here: see RULES_NO_SCHEMA_CAN_STATE.)
_JSON_VALUE_DEFS: dict[str, Any] = {
    "JsonObject": {
        "description": "A JSON object whose keys and strings, at any depth, hold no NUL and no"
        " unpaired UTF-16 surrogate, and whose numbers fit a 64-bit float.",
        "type": "object",
        "propertyNames": {"pattern": TEXT_PATTERN},
        "additionalProperties": {"$ref": "#/$defs/JsonValue"},
    },
    "JsonValue": {
        "anyOf": [
            {"type": "string", "pattern": TEXT_PATTERN},
            {"type": "number", "minimum": -MAX_NUMBER, "maximum": MAX_NUMBER},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": {"$ref": "#/$defs/JsonValue"}},
            {"$ref": "#/$defs/JsonObject"},
        ],
    },
}
_METADATA_AS_TEXT = {
    "type": "string",
    "contentMediaType": "application/json",
    "pattern": METADATA_TEXT_PATTERN,
    "description": "The original form: a string holding a JSON object, which follows the"
    " object's rules; no NUL or unpaired surrogate in it, raw or escaped.",
}


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an event body, from `consumer.events.Event`."""
    schema = Event.model_json_schema()
    schema["$defs"].update(_JSON_VALUE_DEFS)
    # The model turns string metadata (the original form) into an object before validating
    # it, so its own schema shows only the object; a publisher may send either.
    schema["properties"]["metadata"]["anyOf"] = [
        {"$ref": "#/$defs/JsonObject"},
        _METADATA_AS_TEXT,
        {"type": "null"},
    ]
    rules = " ".join(
        f"({number}) {rule}" for number, rule in enumerate(RULES_NO_SCHEMA_CAN_STATE, 1)
    )
    schema["description"] += (
        " Unknown fields are ignored. The consumer also enforces what no JSON Schema can state: "
        + rules
    )
    return {"$schema": JSON_SCHEMA_DIALECT, **schema, "title": EVENT_TITLE}


def event_json_schema_text() -> str:
    """`event_json_schema()` as the text `task-history schema` prints (and docs/ holds)."""
    return json.dumps(event_json_schema(), indent=2, ensure_ascii=False) + "\n"


def typescript() -> str:
    """TypeScript: the context types, a stored entry (as returned and as first typed), an event."""
    entry = HistoryEntry.model_json_schema(mode="serialization")
    entry["description"] = _ENTRY_DESCRIPTION
    entry["properties"]["metadata"]["description"] = _ENTRY_METADATA_DESCRIPTION
    event = event_json_schema()
    event["description"] = _EVENT_DESCRIPTION
    context_type = entry["$defs"]["ContextType"]
    names = {
        "#/$defs/ContextType": CONTEXT_TYPE_NAME,
        "#/$defs/JsonObject": "Record<string, unknown>",
    }
    literals = "".join(f"\n  | {json.dumps(value)}" for value in context_type["enum"])
    blocks = [
        _GENERATED_BY,
        _comment(context_type.get("description"), indent="")
        + f"export type {CONTEXT_TYPE_NAME} ={literals};",
        _interface(ENTRY_NAME, entry, names),
        _interface(
            ORIGINAL_ENTRY_NAME,
            {
                **entry,
                "description": _ORIGINAL_DESCRIPTION,
                "properties": {**entry["properties"], "metadata": _ORIGINAL_METADATA},
            },
            names,
        ),
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
    """A TSDoc comment for `text` (one line when it fits, else wrapped), or nothing."""
    if not text:
        return ""
    one_line = " ".join(text.split()).replace("*/", "* /")
    if len(indent) + len(one_line) + 7 <= _WIDTH:
        return f"{indent}/** {one_line} */\n"
    lines = textwrap.wrap(one_line, width=_WIDTH - len(indent) - 3, break_on_hyphens=False)
    body = "".join(f"{indent} * {line}\n" for line in lines)
    return f"{indent}/**\n{body}{indent} */\n"
