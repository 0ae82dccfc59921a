"""What a read asks for (filters, order, page size) and the opaque cursor that resumes it."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from consumer.entries import ContextType, HistoryEntry
from consumer.errors import InvalidCursorError

# Cursor text: a version-and-direction tag, created_at in ISO form, and the arrival sequence.
_ASCENDING = "a1"
_DESCENDING = "d1"
# Far longer than any cursor given out (about 70 characters); a longer text is not decoded.
_LONGEST = 200
# seq is a bigint column.
_LAST_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last entry's (created_at, seq), and the order it was read in."""

    created_at: datetime
    seq: int
    newest_first: bool = False

    def encode(self) -> str:
        """The cursor as URL-safe text, to pass back with `--after`."""
        tag = _DESCENDING if self.newest_first else _ASCENDING
        text = f"{tag}|{self.created_at.isoformat()}|{self.seq}"
        return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Read a cursor given out by `encode`; raise InvalidCursorError for anything else.

        A forged one is refused too: its time must be one the database can be given (years 1
        to 9999 in UTC), its arrival number a bigint.
        """
        if len(text) > _LONGEST:
            raise InvalidCursorError
        try:
            padded = text + "=" * (-len(text) % 4)
            tag, created, seq = (
                base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split("|")
            )
            parsed = datetime.fromisoformat(created)
            number = int(seq)
            created_at = parsed.astimezone(UTC) if parsed.tzinfo is not None else None
        except (ValueError, UnicodeError, binascii.Error, OverflowError):
            raise InvalidCursorError from None
        if tag not in (_ASCENDING, _DESCENDING) or not 0 <= number <= _LAST_SEQ:
            raise InvalidCursorError
        if created_at is None:
            raise InvalidCursorError
        return cls(created_at, number, newest_first=tag == _DESCENDING)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which entries to read, in which order; every filter is optional and they all combine.

    `since` is inclusive and `until` exclusive, both on `created_at`. `limit` None reads
    everything (export); `after` resumes after the entry a previous page ended with.
    """

    task_id: UUID | None = None
    workspace_id: UUID | None = None
    session_id: UUID | None = None
    context_types: Sequence[ContextType] = field(default_factory=tuple)
    since: datetime | None = None
    until: datetime | None = None
    newest_first: bool = False
    limit: int | None = None
    after: Cursor | None = None

    def __post_init__(self) -> None:
        """Refuse a cursor made for the other direction: it would skip or repeat entries."""
        if self.after is not None and self.after.newest_first != self.newest_first:
            order = "newest first" if self.after.newest_first else "oldest first"
            raise InvalidCursorError(f"the cursor belongs to a read {order}: match --newest-first")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of entries, and the cursor of the next page (None on the last one)."""

    entries: list[HistoryEntry]
    next: Cursor | None
    # Whether a byte budget stopped the page before its limit.
    cut: bool = False
