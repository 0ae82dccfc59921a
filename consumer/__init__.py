"""task-build-history: keeps the build history of tasks run by AI coding agents."""

from consumer.entries import ContextType, HistoryEntry
from consumer.errors import TaskHistoryError
from consumer.publisher import HistoryPublisher
from consumer.store import Store

__all__ = ["ContextType", "HistoryEntry", "HistoryPublisher", "Store", "TaskHistoryError"]
