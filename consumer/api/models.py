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
    """One dead letter whole, as `task-history dlq show` prints it, and its body's bytes."""

    properties: dict[str, object]
    headers: dict[str, object]
    body: object = Field(
        description="The body parsed as JSON, else as text; null when it is not UTF-8 (see"
        " body_base64)."
    )
    body_base64: str | None = Field(
        default=None,
        description="When the body is not UTF-8: its bytes as kept, in base64 (as `dlq export`).",
    )
    body_bytes: int = Field(description="The body's length in bytes, as stored.")
    body_text: str | None = Field(
        description="The body exactly, when it is UTF-8 text; else null (see body_hex)."
    )
    body_hex: str | None = Field(
        description="When the body is not UTF-8: its first 16,384 bytes in hexadecimal."
    )


class ListedDeadLetter(DeadLetterSummary):
    """One dead letter in a list: why it failed, when, where it was going, its body's size."""

    body_bytes: int


class DeadLetterPage(BaseModel):
    """A page of dead letters, newest first, and the cursor of the next page (null: the last)."""

    letters: list[ListedDeadLetter]
    next: str | None = Field(description="Pass it back as `after` for the next page.")


class TimelineSeries(BaseModel):
    """One error code's or task's dead letters in each bucket (or, `other`, the rest's)."""

    key: str | None = Field(description="The error code or task id; null: naming no task.")
    other: bool = Field(description="The letters of every key beyond the top ones, together.")
    total: int
    counts: list[int]


class DeadLetterTimeline(BaseModel):
    """Dead letters counted per bucket of time, by error code or by task: the console's chart."""

    by: str
    bucket_seconds: int
    start: str = Field(description="When the first bucket starts (RFC 3339).")
    buckets: list[str] = Field(description="When each bucket starts.")
    series: list[TimelineSeries]


class RecordedAction(BaseModel):
    """One replay or purge on the record: when, who, the filter, how many, how it ended."""

    id: int
    action: str = Field(description="replay or purge")
    started_at: str
    finished_at: str | None
    actor: str = Field(description="The operator token's name, or the user who ran a command.")
    via: str = Field(description="http or command")
    database_role: str
    filter: dict[str, object]
    selected: int = Field(description="Letters the filter chose when it began.")
    affected: int = Field(description="Letters replayed or deleted, counted as each batch commits.")
    skipped: int = Field(description="Letters chosen but left (replayed too often, unroutable).")
    state: str = Field(description="running, finished or failed")
    detail: str | None
    request_id: str | None


class ActionPage(BaseModel):
    """A page of the record of replays and purges, newest first."""

    actions: list[RecordedAction]
    next: str | None = Field(description="Pass it back as `after` for older ones.")


class OperationResult(BaseModel):
    """What a replay or purge did (or, for a dry run, would choose)."""

    dry_run: bool
    selected: int = Field(description="Letters the filter chose.")
    count: int = Field(description="Letters replayed or deleted (a dry run: chosen).")
    through: int | None = Field(
        description="The newest letter's id chosen: send it back to act on exactly these."
    )
    left_behind: dict[str, int] = Field(
        description="Letters chosen but left, by reason (a replay: at_max_replays, unroutable)."
    )
    left: int | None = Field(description="Dead letters left in all, after it.")
    action: RecordedAction | None = Field(description="The record of it (null for a dry run).")


class RecentTaskItem(BaseModel):
    """A task in the list of recent tasks."""

    task_id: str
    entries: int = Field(description="Entries stored now (those past expiry until deleted).")
    errors: int = Field(description="Of those, entries of context type error.")
    last_activity: str = Field(description="The newest created_at of its entries (RFC 3339).")


class TaskList(BaseModel):
    """A page of recent tasks, newest activity first."""

    tasks: list[RecentTaskItem]
    next: str | None = Field(description="Pass it back as `after` for the next page.")
    examined: int = Field(description="Tasks looked at for this page (a search looks at a few).")


class TypeCounts(BaseModel):
    """How many entries of each context type a task, workspace or session has (all pages)."""

    total: int
    by_type: dict[str, int]


class Problem(BaseModel):
    """Why a request was refused or failed, in one readable line."""

    detail: str


class Health(BaseModel):
    """What a health check answers."""

    status: str
