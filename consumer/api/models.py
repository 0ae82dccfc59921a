"""The shapes the API answers with, as pydantic models: its OpenAPI document is made from them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from consumer.entries import HistoryEntry


class HistoryPage(BaseModel):
    """One page of entries, oldest first, and the cursor of the next page (null on the last)."""

    entries: list[HistoryEntry]
    next: str | None = Field(
        description="Pass it back as `after` for the next page; null when no entry follows."
    )


class TaskCount(BaseModel):
    """How many dead letters of one error code name one task (null: the body named none)."""

    task_id: str | None
    count: int


class ErrorCount(BaseModel):
    """The dead letters of one error code: how many, and the tasks with the most."""

    error: str
    count: int
    tasks: list[TaskCount]


class TruncatedBody(BaseModel):
    """A body over 1 MiB, of which only the start was kept: its whole length and SHA-256."""

    bytes: int
    sha256: str
    kept: int


class DeadLetterSummary(BaseModel):
    """One dead letter, without its message: why it failed, when, and where it was going."""

    id: int | None
    message_id: str | None
    task_id: str | None
    routing_key: str
    error: str
    detail: str
    failed_at: str | None
    replay_count: int
    body_truncated: TruncatedBody | None = Field(
        default=None, description="Set when the body was over 1 MiB: only its start was kept."
    )


class DeadLetterCensus(BaseModel):
    """What `task-history dlq list --json` prints: the total, each code's count, the newest few."""

    total: int
    by_error: list[ErrorCount]
    newest: list[DeadLetterSummary]


class DeadLetterMessage(DeadLetterSummary):
    """One dead letter whole, as `task-history dlq show` prints it."""

    properties: dict[str, object]
    headers: dict[str, object]
    body: object = Field(description="The body parsed as JSON, else as text.")


class Problem(BaseModel):
    """Why a request was refused or failed, in one readable line."""

    detail: str


class Health(BaseModel):
    """What a health check answers."""

    status: str
