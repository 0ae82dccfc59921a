"""task-build-history: keeps the build history of tasks run by AI coding agents."""

from consumer.entries import ContextType, HistoryEntry
from consumer.errors import TaskHistoryError
from consumer.store import Store

__all__ = ["ContextType", "HistoryEntry", "Store", "TaskHistoryError"]
