"""What the peer consumers share: their command line, the event model, the SQL, the drain clock.

The peers run in processes of their own, some in an environment of their own (see
`environment`), so this module needs nothing but pydantic, which every peer has.

Each peer prints JSON lines on stdout: `{"event": "consuming"}` once subscribed and, when
given `--events N`, `{"event": "drained", "seconds": ...}` once it has written N events, from
the first it handled to the last, and then it exits. Without `--events` it runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, Field, Json

ContextType = Literal[
    "chat_message", "execution_step", "agent_turn", "setup_complete", "error", "status_change"
]
COLUMNS = "id, task_id, workspace_id, session_id, context_type, content, metadata, created_at"
INSERT_ONE = f"""
INSERT INTO task_build_history ({COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
ON CONFLICT (id) DO NOTHING
"""
INSERT_MANY = f"""
INSERT INTO task_build_history ({COLUMNS})
SELECT id, task_id, workspace_id, session_id, context_type, content, metadata::jsonb, created_at
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[]) AS u({COLUMNS})
ON CONFLICT (id) DO NOTHING
"""

Row = tuple[UUID, UUID, UUID | None, UUID | None, str, str, str | None, datetime]


def now() -> datetime:
    """The time now, in UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """An event as agents publish it: the contract's fields, validated."""

    id: UUID = Field(default_factory=uuid4)
    task_id: UUID
    workspace_id: UUID | None = None
    session_id: UUID | None = None
    context_type: ContextType
    content: str
    # An object, or a string holding one: the contract takes both.
    metadata: dict[str, Any] | Json[dict[str, Any]] | None = None
    created_at: AwareDatetime = Field(default_factory=now)

    def row(self) -> Row:
        """The event as the INSERT statements take it."""
        metadata = None if self.metadata is None else json.dumps(self.metadata)
        return (
            self.id,
            self.task_id,
            self.workspace_id,
            self.session_id,
            self.context_type,
            self.content,
            metadata,
            self.created_at,
        )


def columns(rows: list[Row]) -> list[list[Any]]:
    """Rows turned into one list per column, as INSERT_MANY takes them."""
    return [list(column) for column in zip(*rows, strict=True)]


def say(event: str, **fields: object) -> None:
    """Tell the benchmark something, as one JSON line on stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


def options(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line every peer takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument(
        "--queue-arguments", type=json.loads, default={}, help="as declared, in JSON"
    )
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batch-wait-ms", type=float, default=50)
    parser.add_argument("--events", type=int, default=0, help="exit after this many")
    return parser.parse_args(argv)


class Drain:
    """Times a drain of `total` events, from the first one handled to the last one written."""

    def __init__(self, total: int, *, done: Callable[[], object]) -> None:
        """Count up to `total` (0: never done), then report and call `done`."""
        self.total = total
        self._done = done
        self._seen = 0
        self._first = 0.0

    def started(self) -> None:
        """Handling began: the first call starts the clock."""
        if self._first == 0.0:
            self._first = time.perf_counter()

    def written(self, count: int = 1) -> None:
        """`count` more events written; at the total, report the seconds and finish."""
        self._seen += count
        if self.total and self._seen >= self.total and self._first:
            say("drained", seconds=time.perf_counter() - self._first, events=self._seen)
            self._first = 0.0
            self._done()
