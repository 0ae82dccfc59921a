"""The only package that talks to PostgreSQL: `Store`, composed of one class per concern.

Modules: `queries` (every SQL text, and the read builder), `pool` (the pool and the asyncpg
boundary), `schema`, `cron` (pg_cron), `writes`, `reads`, `expiry`, `deadletters` (the
dead-letter table, for `task-history dlq`), `actions` (the record of replays and purges) and
`tasks` (the recent tasks, for the console).
"""

from __future__ import annotations

from consumer.store.actions import ActionStore
from consumer.store.cron import CronStore
from consumer.store.deadletters import DeadLetterStore
from consumer.store.expiry import ExpiryStore
from consumer.store.queries import (
    EXPIRE_LOCK,
    MIGRATE_LOCK,
    NOTIFY_CHANNEL,
)
from consumer.store.reads import ReadStore
from consumer.store.schema import SchemaStore
from consumer.store.tasks import TaskStore
from consumer.store.writes import WriteStore

__all__ = [
    "EXPIRE_LOCK",
    "MIGRATE_LOCK",
    "NOTIFY_CHANNEL",
    "Store",
]


class Store(
    SchemaStore,
    CronStore,
    WriteStore,
    ReadStore,
    ExpiryStore,
    DeadLetterStore,
    ActionStore,
    TaskStore,
):
    """A pool of connections to the history database, and every query the project runs."""
