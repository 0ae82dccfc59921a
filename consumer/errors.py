"""The project's exceptions: one base, each docstring is the default message."""

from __future__ import annotations


class TaskHistoryError(Exception):
    """Task history failed."""

    def __init__(self, message: str | None = None) -> None:
        """Use `message`, or the class docstring when there is none."""
        super().__init__(message or self.__doc__)


class ConfigurationError(TaskHistoryError):
    """The configuration is invalid."""


class NotMigratedError(TaskHistoryError):
    """The database schema is not up to date: run `task-history migrate`."""


class MigrationEditedError(TaskHistoryError):
    """A migration file was edited after it was applied: add a new migration instead."""


class StoreError(TaskHistoryError):
    """The database refused the operation."""


class DatabaseUnavailableError(StoreError):
    """The database can't be reached; the operation can be retried."""


class ConcurrencyConflictError(StoreError):
    """A concurrent transaction got in the way (deadlock or serialization); retry."""


class DataRejectedError(StoreError):
    """The database refused the data of a row (a constraint or a value it can't store)."""


class BrokerError(TaskHistoryError):
    """The message broker refused the operation."""


class BrokerUnavailableError(BrokerError):
    """The message broker can't be reached; the operation can be retried."""


class DeadLetterQueueBusyError(BrokerError):
    """Another `task-history dlq` command is working on the dead-letter queue; try again later."""


class DeadLetterNotFoundError(TaskHistoryError):
    """No dead letter has that message id."""


class UnroutableError(BrokerError):
    """The broker could route the message to no queue: nothing is bound for its routing key."""


class PgCronUnavailableError(StoreError):
    """pg_cron is not available on this PostgreSQL server."""
