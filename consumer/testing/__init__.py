"""Helpers for other projects' tests: wait for what a running consumer stored, or stand in for it.

`publish_and_wait`, `wait_for_entries` and `read_history` work against the real servers, or,
given an `InMemoryPublisher`, against what it recorded, with no server at all.
"""

from consumer.errors import HistoryNotSeenError
from consumer.testing.memory import InMemoryPublisher, Refusal
from consumer.testing.waits import HistorySource, publish_and_wait, read_history, wait_for_entries

__all__ = [
    "HistoryNotSeenError",
    "HistorySource",
    "InMemoryPublisher",
    "Refusal",
    "publish_and_wait",
    "read_history",
    "wait_for_entries",
]
