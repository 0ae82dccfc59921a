"""What the history holds: the six context types and a stored entry."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple
from uuid import UUID

from pydantic import BaseModel, ConfigDict


class ContextType(StrEnum):
    """What kind of event an entry records."""

    CHAT_MESSAGE = "chat_message"
    EXECUTION_STEP = "execution_step"
    AGENT_TURN = "agent_turn"
    SETUP_COMPLETE = "setup_complete"
    ERROR = "error"
    STATUS_CHANGE = "status_change"


class HistoryEntry(BaseModel):
    """One stored entry: its nine fields."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    task_id: UUID
    workspace_id: UUID | None
    session_id: UUID | None
    context_type: ContextType
    content: str
    metadata: dict[str, Any] | None
    created_at: datetime
    expires_at: datetime


class NewEntry(NamedTuple):
    """One row to insert; `metadata` is JSON text (an object) or None."""

    id: UUID
    task_id: UUID
    workspace_id: UUID | None
    session_id: UUID | None
    context_type: str
    content: str
    metadata: str | None
    created_at: datetime
