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

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\})")


def interpolate(text: str, environment: Mapping[str, str]) -> str:
    """Replace `${NAME}`, `${NAME:-default}` and `$$` as Compose does (the subset used here)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        value = environment.get(match.group("name"), "")
        return value or (match.group("default") or "")

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
    """The compose file as a mapping, anchors merged and variables replaced by `environment`."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    resolved = _resolve(raw, environment or {})
    assert isinstance(resolved, dict)
    return resolved
