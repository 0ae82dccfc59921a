"""The project's exceptions: one base, explicit messages, and retryability as a class property.

Messages are class attributes, not docstrings: `python -OO` strips docstrings, and a message
read from one would print "None". Whether an error is worth retrying is decided here, once,
by its class (`retryable`), so no caller keeps its own list.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class TaskHistoryError(Exception):
    """The base of every error the project raises on purpose."""

    default_message: ClassVar[str] = "Task history failed."
    # Whether the same operation may succeed later unchanged: a server coming back, a lock
    # freed. The consumer waits such errors out; any other error is a bug or a bad setting.
    retryable: ClassVar[bool] = False

    def __init__(self, message: str | None = None) -> None:
        """Use `message`, or the class's default message when there is none."""
        super().__init__(message or self.default_message)


class ConfigurationError(TaskHistoryError):
    """A setting is invalid."""

    default_message = "The configuration is invalid."


class NotConnectedError(TaskHistoryError):
    """A client was used before it was opened or after it was closed: a bug, not an outage."""

    default_message = "The client was used before it was opened, or after it was closed."


class MigrationEditedError(TaskHistoryError):
    """An applied migration file changed."""

    default_message = (
        "A migration file was edited after it was applied: add a new migration instead."
    )


class StoreError(TaskHistoryError):
    """The database refused an operation.

    Every database error is retried, not only lost connections: a read-only failover, a full
    disk or a revoked grant must not crash-loop the consumer into dead-lettering valid events.
    """

    default_message = "The database refused the operation."
    retryable = True


class NotMigratedError(StoreError):
    """The database lacks a migration this release ships."""

    default_message = "The database schema is not up to date: run `task-history migrate`."


class DatabaseUnavailableError(StoreError):
    """The database can't be reached."""

    default_message = "The database can't be reached; the operation can be retried."


class ConcurrencyConflictError(StoreError):
    """A concurrent transaction got in the way: a deadlock, a serialization failure."""

    default_message = "A concurrent transaction got in the way (deadlock or serialization); retry."


class DataRejectedError(StoreError):
    """The database refused the data of a row: a constraint, or a value it can't store."""

    default_message = (
        "The database refused the data of a row (a constraint or a value it can't store)."
    )

    def __init__(self, message: str | None = None, *, reason: str | None = None) -> None:
        """`reason` is the refusal without the row's values: the same for every row it hits."""
        super().__init__(message)
        self.reason = reason or str(self)


class PgCronUnavailableError(StoreError):
    """pg_cron is missing on the server."""

    default_message = "pg_cron is not available on this PostgreSQL server."
    retryable = False


class BrokerError(TaskHistoryError):
    """The message broker refused an operation."""

    default_message = "The message broker refused the operation."
    retryable = True


class BrokerUnavailableError(BrokerError):
    """The message broker can't be reached."""

    default_message = "The message broker can't be reached; the operation can be retried."


class UnroutableError(BrokerError):
    """A mandatory message was returned: no queue is bound for its routing key."""

    default_message = (
        "The broker could route the message to no queue: nothing is bound for its routing key."
    )


class DeadLetterNotFoundError(TaskHistoryError):
    """No dead letter has the id or message id asked for."""

    default_message = "No dead letter has that id or message id."


class InvalidCursorError(TaskHistoryError):
    """A page cursor this program did not give out."""

    default_message = (
        "The cursor is not one this program gave out (or was made for the other direction)."
    )


class ErrorCode(StrEnum):
    """Why a message was dead-lettered: the `x-error` header."""

    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"
    TOO_LARGE = "too_large"
    UNKNOWN_TASK = "unknown_task"
    EXPIRED = "expired"
    DELIVERY_LIMIT = "delivery_limit"
    DATABASE_REJECTED = "database_rejected"
    INVALID_PROPERTIES = "invalid_properties"
    INTERNAL_ERROR = "internal_error"


class InvalidEventError(TaskHistoryError):
    """A message that is not a valid event, with its `x-error` code and one-line detail."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        """Record the `x-error` code and the one-line `x-error-detail`."""
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class HistoryNotSeenError(TaskHistoryError, AssertionError):
    """A test waited for entries that did not show up in time."""

    default_message = "The history did not show what the test waited for in time."
