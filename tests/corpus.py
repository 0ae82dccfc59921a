"""Bad messages: one of every kind the contract forbids, with the code and detail each earns."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from tests.harness import event


class Bad(NamedTuple):
    """A bad message body, the `x-error` it must earn, and a word its detail must hold."""

    code: str
    body: bytes | dict[str, Any]
    word: str

    @property
    def raw(self) -> bytes:
        """The body as it goes over the wire."""
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def _raw(task: uuid.UUID, content: str = '"x"', tail: str = "") -> bytes:
    """A body written by hand, for what json.dumps can't produce."""
    return (
        f'{{"task_id": "{task}", "context_type": "agent_turn", "content": {content}{tail}}}'
    ).encode()


def bad_bodies(task: uuid.UUID) -> list[Bad]:
    """Every rule of contract §1 broken once (and the ways bytes go wrong), for task `task`."""
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    old = (datetime.now(UTC) - timedelta(days=21)).isoformat()
    good = event(task)
    without_content = {key: value for key, value in good.items() if key != "content"}
    deep = "[" * 5000 + "]" * 5000
    duplicate_task_id = (
        f'{{"task_id": "{task}", "task_id": "x", "context_type": "error", "content": "x"}}'
    ).encode()
    return [
        # Not JSON at all, or not UTF-8.
        Bad("invalid_json", b"{not json", "JSON"),
        Bad("invalid_json", b"", "JSON"),
        Bad("invalid_json", b"   \n", "JSON"),
        Bad("invalid_json", b'{"task_id": "\xff\xfe"}', "JSON"),
        Bad("invalid_json", json.dumps(good).encode("utf-16"), "JSON"),
        Bad("invalid_json", b"\xef\xbb\xbf" + json.dumps(good).encode(), "JSON"),
        Bad("invalid_json", _raw(task).replace(b'"x"', b'"caf\xe9"'), "JSON"),
        Bad("invalid_json", _raw(task).replace(b'"x"', b'"\xc0\xaf"'), "JSON"),
        Bad("invalid_json", _raw(task) + b" trailing", "trailing"),
        Bad("invalid_json", _raw(task) + _raw(task), "trailing"),
        # JSON that pydantic's parser refuses but JSON allows: a rule of the event, not bad JSON.
        Bad("invalid_event", _raw(task, '"a\\ud800"'), "unpaired UTF-16 surrogate"),
        Bad("invalid_event", _raw(task, tail=f', "metadata": {{"deep": {deep}}}'), "64-level"),
        Bad("invalid_event", _raw(task, tail=', "metadata": {"n": ' + "9" * 5000 + "}"), "beyond"),
        # JSON, but not an object.
        Bad("invalid_event", b"[1, 2]", "object"),
        Bad("invalid_event", b"null", "object"),
        Bad("invalid_event", b'"an event"', "object"),
        Bad("invalid_event", b"42", "object"),
        # A field missing, or of the wrong type or form.
        Bad("invalid_event", {"context_type": "agent_turn", "content": "x"}, "task_id"),
        Bad("invalid_event", {**good, "task_id": "not-a-uuid"}, "task_id"),
        Bad("invalid_event", {**good, "task_id": None}, "task_id"),
        Bad("invalid_event", {**good, "task_id": [str(task)]}, "task_id"),
        Bad("invalid_event", {**good, "id": "not-a-uuid"}, "id"),
        Bad("invalid_event", {**good, "id": 7}, "id"),
        Bad("invalid_event", event(task, workspace_id="nope"), "workspace_id"),
        Bad("invalid_event", event(task, workspace_id={"id": str(task)}), "workspace_id"),
        Bad("invalid_event", event(task, session_id=12), "session_id"),
        Bad("invalid_event", event(task, session_id=True), "session_id"),
        Bad("invalid_event", event(task, context_type="gossip"), "context_type"),
        Bad("invalid_event", event(task, context_type="AGENT_TURN"), "context_type"),
        Bad("invalid_event", {**good, "context_type": None}, "context_type"),
        Bad("invalid_event", {**good, "context_type": 3}, "context_type"),
        Bad("invalid_event", without_content, "content"),
        Bad("invalid_event", event(task, ""), "content"),
        Bad("invalid_event", event(task, "x" * 65_537), "content"),
        Bad("invalid_event", event(task, "nul \x00 here"), "NUL"),
        Bad("invalid_event", {**good, "content": 42}, "content"),
        Bad("invalid_event", {**good, "content": None}, "content"),
        Bad("invalid_event", {**good, "content": ["x"]}, "content"),
        Bad("invalid_event", event(task, metadata=[1, 2]), "metadata"),
        Bad("invalid_event", event(task, metadata=5), "metadata"),
        Bad("invalid_event", event(task, metadata=True), "metadata"),
        Bad("invalid_event", event(task, metadata="not json"), "metadata"),
        Bad("invalid_event", event(task, metadata="[1]"), "metadata"),
        Bad("invalid_event", event(task, metadata='"{}"'), "metadata"),
        Bad("invalid_event", event(task, metadata={"big": "y" * 65_536}), "metadata"),
        Bad("invalid_event", event(task, metadata={"nul": "a\x00b"}), "NUL"),
        Bad("invalid_event", event(task, metadata='{"nul": "a\\u0000b"}'), "NUL"),
        Bad("invalid_event", _raw(task, tail=', "metadata": {"n": NaN}'), "NaN"),
        Bad("invalid_event", _raw(task, tail=', "metadata": {"n": 1e400}'), "Infinity"),
        Bad("invalid_event", event(task, created_at="2026-11-20T10:00:00"), "created_at"),
        Bad("invalid_event", event(task, created_at="2026-02-30T10:00:00Z"), "created_at"),
        Bad("invalid_event", event(task, created_at="2026-02-10T10:00:00+25:00"), "created_at"),
        Bad("invalid_event", event(task, created_at=future), "future"),
        Bad("invalid_event", event(task, created_at=1_700_000_000), "created_at"),
        Bad("invalid_event", event(task, created_at=True), "created_at"),
        Bad("invalid_event", event(task, created_at={"at": "now"}), "created_at"),
        # Duplicate keys: the last one counts (as in JavaScript), here a bad one.
        Bad("invalid_event", duplicate_task_id, "task_id"),
        Bad("invalid_event", _raw(task, tail=', "content": ""'), "content"),
        # Valid in form, refused for what it says.
        Bad("expired", event(task, created_at=old), "retention"),
        Bad("too_large", event(task, "z" * 60_000, padding="p" * (1 << 20)), "bytes"),
        Bad("unknown_task", event(uuid.uuid4()), "no task"),
    ]
