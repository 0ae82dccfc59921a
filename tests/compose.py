"""docker-compose.yml read as Compose reads it: YAML, then `${VAR:-default}` interpolation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPOSITORY = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPOSITORY / "docker-compose.yml"
DOCKERFILE = REPOSITORY / "Dockerfile"

_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\})"
)

# What a user's .env beside the compose file holds (README.md, "With Docker"): the stack has no
# default passwords. Values a test can tell apart.
EXAMPLE_ENV = {
    "POSTGRES_PASSWORD": "owner-pw",
    "HISTORY_DB_PASSWORD": "consumer-pw",
    "HISTORY_READER_PASSWORD": "reader-pw",
    "RABBITMQ_PASSWORD": "broker-pw",
    "RABBITMQ_ADMIN_PASSWORD": "admin-pw",
    "API_TOKEN": "api-token",
}


class MissingVariableError(KeyError):
    """A `${NAME:?message}` variable with no value: Compose stops with the message."""


def interpolate(text: str, environment: Mapping[str, str]) -> str:
    """Replace `${NAME}`, `${NAME:-default}`, `${NAME:?error}` and `$$` as Compose does.

    The forms without a colon (`-`, `?`) treat an empty value as set, as Compose does.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator = match.group("name"), match.group("operator") or ""
        value = environment.get(name)
        unset = value is None or (operator.startswith(":") and value == "")
        if operator.endswith("?") and unset:
            raise MissingVariableError(f"{name}: {match.group('argument')}")
        if operator.endswith("-") and unset:
            return match.group("argument")
        return value or ""

    return _VARIABLE.sub(replace, text)


def _resolve(node: object, environment: Mapping[str, str]) -> object:
    if isinstance(node, str):
        return interpolate(node, environment)
    if isinstance(node, list):
        return [_resolve(item, environment) for item in node]
    if isinstance(node, dict):
        return {key: _resolve(value, environment) for key, value in node.items()}
    return node


def load_compose(environment: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as a mapping, anchors merged and variables replaced by `environment`.

    Without `environment`, the example .env's values; a required variable left out raises
    MissingVariableError, as `docker compose up` stops.
    """
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    resolved = _resolve(raw, EXAMPLE_ENV if environment is None else environment)
    assert isinstance(resolved, dict)
    return resolved
