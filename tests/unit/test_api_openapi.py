"""The API's OpenAPI document describes entries exactly as docs/types.ts types them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from consumer.api import create_app
from consumer.schema import CONTEXT_TYPE_NAME, ENTRY_NAME, ts_type
from consumer.settings import load_settings

TYPES_TS = Path(__file__).resolve().parents[2] / "docs" / "types.ts"
REF = "#/components/schemas/"


def ts_interface(text: str, name: str) -> dict[str, tuple[str, bool]]:
    """The fields of `export interface NAME` in TypeScript `text`: name -> (type, optional)."""
    body = re.search(rf"export interface {name} \{{\n(.*?)\n\}}", text, re.DOTALL)
    assert body is not None, f"no interface {name} in docs/types.ts"
    without_comments = re.sub(r"/\*\*.*?\*/", "", body.group(1), flags=re.DOTALL)
    fields = {}
    for line in without_comments.splitlines():
        if line.strip():
            found = re.fullmatch(r"\s*(\w+)(\??): (.+);", line)
            assert found is not None, line
            fields[found[1]] = (found[3], found[2] == "?")
    return fields


def ts_union(text: str, name: str) -> list[str]:
    """The string literals of `export type NAME = | "a" | "b";` in TypeScript `text`."""
    body = re.search(rf"export type {name} =(.*?);", text, re.DOTALL)
    assert body is not None, f"no type {name} in docs/types.ts"
    return re.findall(r'"([^"]*)"', body.group(1))


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The OpenAPI document of an app with default settings (made without a database)."""
    return create_app(load_settings()).openapi()


class TestEntrySchemaMatchesTypeScript:
    """An entry in /openapi.json has the fields, types and nullability of TaskBuildHistoryEntry."""

    def test_same_fields_types_and_nullability(self, document: dict[str, Any]) -> None:
        """Each field's TypeScript type, made from the OpenAPI schema, is the one types.ts has."""
        schema = document["components"]["schemas"][ENTRY_NAME]
        names = {f"{REF}{CONTEXT_TYPE_NAME}": CONTEXT_TYPE_NAME}
        required = set(schema["required"])
        from_openapi = {
            field: (ts_type(field_schema, names), field not in required)
            for field, field_schema in schema["properties"].items()
        }
        assert from_openapi == ts_interface(TYPES_TS.read_text(), ENTRY_NAME)
        assert from_openapi["metadata"] == ("Record<string, unknown> | null", False)
        assert from_openapi["workspace_id"] == ("string | null", False)

    def test_same_context_types(self, document: dict[str, Any]) -> None:
        """The context type's values are the TypeScript union's, in its order."""
        schema = document["components"]["schemas"][CONTEXT_TYPE_NAME]
        assert schema["enum"] == ts_union(TYPES_TS.read_text(), CONTEXT_TYPE_NAME)

    def test_pages_hold_such_entries(self, document: dict[str, Any]) -> None:
        """The three history routes answer a page whose entries are TaskBuildHistoryEntry."""
        page = document["components"]["schemas"]["HistoryPage"]
        assert page["properties"]["entries"]["items"] == {"$ref": f"{REF}{ENTRY_NAME}"}
        assert page["properties"]["next"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
        for path in (
            "/tasks/{task_id}/history",
            "/workspaces/{workspace_id}/history",
            "/sessions/{session_id}/history",
        ):
            answer = document["paths"][path]["get"]["responses"]["200"]
            assert answer["content"]["application/json"]["schema"] == {"$ref": f"{REF}HistoryPage"}


class TestDocumentedRoutes:
    """The document lists the routes of the contract, and no docs page loading outside scripts."""

    def test_routes(self, document: dict[str, Any]) -> None:
        """Every read route of the API is in it, each a GET; the page and its files are not."""
        assert set(document["paths"]) == READ_ROUTES
        assert all(set(operations) == {"get"} for operations in document["paths"].values())
        stream = document["paths"]["/tasks/{task_id}/history/stream"]["get"]
        assert "text/event-stream" in stream["responses"]["200"]["content"]

    def test_the_token_is_declared_only_when_set(self) -> None:
        """With a token, the guarded routes name the bearer scheme; the health checks don't."""
        guarded = create_app(load_settings(api_token="t0ken")).openapi()  # noqa: S106  # a test token
        assert guarded["paths"]["/dead-letters"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in guarded["paths"]["/healthz"]["get"]
        open_document = create_app(load_settings()).openapi()
        assert "security" not in open_document["paths"]["/dead-letters"]["get"]

    def test_operator_routes_only_with_the_operator_token(self) -> None:
        """With an operator token, replay and purge are POSTs for the operator scheme alone."""
        settings = load_settings(api_token="r3ader", api_operator_token="0perator")  # noqa: S106  # test tokens
        document = create_app(settings).openapi()
        assert set(document["paths"]) == READ_ROUTES | OPERATOR_ROUTES
        for path in OPERATOR_ROUTES:
            operation = document["paths"][path]["post"]
            assert set(document["paths"][path]) == {"post"}
            assert operation["security"] == [{"operator": []}]
            assert {"401", "403", "409", "415", "422"} <= set(operation["responses"])
        reads = document["paths"]["/tasks"]["get"]["security"]
        assert reads == [{"bearer": []}, {"operator": []}]
        operators_only = create_app(load_settings(api_operator_token="0perator")).openapi()  # noqa: S106  # a test token
        assert "security" not in operators_only["paths"]["/tasks"]["get"]
        assert operators_only["paths"]["/dead-letters/purge"]["post"]["security"] == [
            {"operator": []}
        ]


READ_ROUTES = {
    "/healthz",
    "/readyz",
    "/tasks",
    "/tasks/{task_id}/history",
    "/tasks/{task_id}/history/counts",
    "/workspaces/{workspace_id}/history",
    "/workspaces/{workspace_id}/history/counts",
    "/sessions/{session_id}/history",
    "/sessions/{session_id}/history/counts",
    "/tasks/{task_id}/history/stream",
    "/dead-letters",
    "/dead-letters/letters",
    "/dead-letters/timeline",
    "/dead-letters/actions",
    "/dead-letters/{key}",
}
OPERATOR_ROUTES = {"/dead-letters/replay", "/dead-letters/purge"}
