"""task-build-history: keeps the build history of tasks run by AI coding agents.

The names below are the library's public API. The light ones (models, queries, errors) are
imported at once; the clients (`Store`, `HistoryPublisher`) on first use, so that importing
an event model or an error does not load the PostgreSQL and RabbitMQ drivers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from consumer.entries import ContextType, HistoryEntry
from consumer.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    DatabaseUnavailableError,
    ErrorCode,
    HistoryNotSeenError,
    InvalidCursorError,
    InvalidEventError,
    NotMigratedError,
    StoreError,
    TaskHistoryError,
    UnroutableError,
)
from consumer.events import Event
from consumer.pages import Cursor, HistoryQuery, Page

if TYPE_CHECKING:
    from consumer.publisher import HistoryPublisher, OutgoingEvent
    from consumer.store import Store
    from consumer.testing import InMemoryPublisher

# Each lazily imported name, and the module that defines it.
_LAZY = {
    "HistoryPublisher": "consumer.publisher",
    "InMemoryPublisher": "consumer.testing",
    "OutgoingEvent": "consumer.publisher",
    "Store": "consumer.store",
}

__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "ContextType",
    "Cursor",
    "DatabaseUnavailableError",
    "ErrorCode",
    "Event",
    "HistoryEntry",
    "HistoryNotSeenError",
    "HistoryPublisher",
    "HistoryQuery",
    "InMemoryPublisher",
    "InvalidCursorError",
    "InvalidEventError",
    "NotMigratedError",
    "OutgoingEvent",
    "Page",
    "Store",
    "StoreError",
    "TaskHistoryError",
    "UnroutableError",
]


def __getattr__(name: str) -> object:
    """Import a client class on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'consumer' has no attribute {name!r}")
