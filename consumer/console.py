"""What the console shows besides entries: recent tasks, letters by page and over time, actions.

Pure shapes and rules, no I/O: the store fills them (consumer.store), the HTTP API and the
`dlq actions` command show them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from consumer.deadletters import DeadLetter
from consumer.errors import InvalidCursorError

# Bucket widths a chart of dead letters uses, narrowest first; the first that gives at most
# MAX_BUCKETS columns over the range is taken.
BUCKETS = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=7),
)
MAX_BUCKETS = 120
# Series a chart shows: the keys with the most letters, the rest as one.
TOP_KEYS = 6
# Where buckets are counted from: midnight UTC, so a day's columns start at midnight.
_EPOCH = datetime(2000, 1, 3, tzinfo=UTC)
# The range a chart may cover: a bucket inside the calendar's ends.
_FIRST = datetime(1, 1, 15, tzinfo=UTC)
_LAST = datetime(9999, 12, 1, tzinfo=UTC)

TimelineKey = Literal["error", "task"]


@dataclass(frozen=True, slots=True)
class RecentTask:
    """A task as the list of recent tasks shows it: how many entries and errors, and when."""

    task_id: UUID
    entries: int
    errors: int
    last_activity: datetime

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, as `GET /tasks` answers."""
        return {
            "task_id": str(self.task_id),
            "entries": self.entries,
            "errors": self.errors,
            "last_activity": self.last_activity.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class TaskCursor:
    """Where a page of recent tasks ended: the last task's activity and id."""

    last_activity: datetime
    task_id: UUID

    def encode(self) -> str:
        """URL-safe text, to pass back as `after`."""
        text = f"t1|{self.last_activity.isoformat()}|{self.task_id}"
        return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> TaskCursor:
        """Read a cursor `encode` gave out; InvalidCursorError for anything else."""
        if len(text) > 200:  # noqa: PLR2004  # far longer than any cursor given out
            raise InvalidCursorError
        try:
            padded = text + "=" * (-len(text) % 4)
            tag, moment, task = (
                base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split("|")
            )
            parsed = datetime.fromisoformat(moment)
            task_id = UUID(task)
            if tag != "t1" or parsed.tzinfo is None:
                raise InvalidCursorError
            return cls(parsed.astimezone(UTC), task_id)
        except (ValueError, UnicodeError, binascii.Error, OverflowError):
            raise InvalidCursorError from None


@dataclass(frozen=True, slots=True)
class TaskPage:
    """A page of recent tasks and the cursor of the next (None on the last).

    A search reads a bounded number of tasks per page: a page may hold fewer tasks than asked,
    even none, and still have a next; `examined` says how many tasks it looked at.
    """

    tasks: list[RecentTask]
    next: TaskCursor | None
    examined: int = 0


@dataclass(frozen=True, slots=True)
class ListedLetter:
    """A dead letter as a list shows it: its summary and its body's size, not the body."""

    letter: DeadLetter
    body_bytes: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: the summary `dlq list` shows, and `body_bytes`."""
        return {**self.letter.summary(), "body_bytes": self.body_bytes}


@dataclass(frozen=True, slots=True)
class Series:
    """The letters of one key (an error code, a task; None: none named) in each bucket."""

    key: str | None
    counts: list[int]
    # The letters of every key beyond the top ones, together.
    other: bool = False

    @property
    def total(self) -> int:
        """Letters over the whole range."""
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class Timeline:
    """Dead letters counted per bucket of time, per key: what the console's chart draws."""

    by: TimelineKey
    bucket: timedelta
    start: datetime
    buckets: int
    series: list[Series] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, as `GET /dead-letters/timeline` answers."""
        return {
            "by": self.by,
            "bucket_seconds": int(self.bucket.total_seconds()),
            "start": self.start.isoformat(),
            "buckets": [(self.start + self.bucket * n).isoformat() for n in range(self.buckets)],
            "series": [
                {"key": s.key, "other": s.other, "total": s.total, "counts": s.counts}
                for s in self.series
            ],
        }


def chart_range(start: datetime, end: datetime) -> tuple[timedelta, datetime, int]:
    """The bucket width, first bucket and number of buckets that cover [start, end].

    The narrowest of BUCKETS that needs fewer than MAX_BUCKETS, its buckets aligned to
    midnight UTC; for a range longer than MAX_BUCKETS weeks, whole days enough to cover it in
    MAX_BUCKETS, from `start`. Times near the ends of the calendar are brought in by a bucket.
    """
    start = min(max(start, _FIRST), _LAST)
    end = min(max(end, start), _LAST)
    span = end - start
    bucket = next((width for width in BUCKETS if span / width < MAX_BUCKETS), None)
    if bucket is None:
        days = -(-span.days // MAX_BUCKETS) + 1
        bucket, first = timedelta(days=days), start
    else:
        first = _EPOCH + bucket * ((start - _EPOCH) // bucket)
    count = int((end - first) // bucket) + 1
    return bucket, first, min(count, MAX_BUCKETS * 2)


def timeline_of(
    rows: list[tuple[datetime, str | None, bool, int]],
    *,
    by: TimelineKey,
    bucket: timedelta,
    start: datetime,
    buckets: int,
) -> Timeline:
    """The chart from the database's rows (bucket start, key, among the top, count)."""
    series: dict[tuple[bool, str | None], list[int]] = {}
    for at, key, top, count in rows:
        index = int((at - start) // bucket)
        if not 0 <= index < buckets:
            continue
        slot = (not top, key if top else None)
        series.setdefault(slot, [0] * buckets)[index] += count
    ordered = sorted(series.items(), key=lambda item: (item[0][0], -sum(item[1])))
    return Timeline(
        by=by,
        bucket=bucket,
        start=start,
        buckets=buckets,
        series=[Series(key=key, counts=counts, other=other) for (other, key), counts in ordered],
    )


ActionKind = Literal["replay", "purge"]
ActionState = Literal["running", "finished", "failed"]


@dataclass(frozen=True, slots=True)
class Action:
    """One replay or purge on the record: when, who, the filter, how many."""

    id: int
    action: ActionKind
    started_at: datetime
    finished_at: datetime | None
    actor: str
    via: str
    database_role: str
    filter: dict[str, Any]
    selected: int
    affected: int
    skipped: int
    state: ActionState
    detail: str | None
    request_id: UUID | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, as `GET /dead-letters/actions` and `dlq actions --json` give it."""
        return {
            "id": self.id,
            "action": self.action,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "actor": self.actor,
            "via": self.via,
            "database_role": self.database_role,
            "filter": self.filter,
            "selected": self.selected,
            "affected": self.affected,
            "skipped": self.skipped,
            "state": self.state,
            "detail": self.detail,
            "request_id": None if self.request_id is None else str(self.request_id),
        }


@dataclass(frozen=True, slots=True)
class ActionPage:
    """A page of the record, newest first, and the id to continue before (None: the last)."""

    actions: list[Action]
    next: int | None
