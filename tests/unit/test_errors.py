"""The exception base: explicit messages, retryability decided by the class."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from consumer import errors
from consumer.broker.amqp import translated_errors
from consumer.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DatabaseUnavailableError,
    DataRejectedError,
    ErrorCode,
    InvalidEventError,
    NotConnectedError,
    NotMigratedError,
    PgCronUnavailableError,
    TaskHistoryError,
)
from consumer.store.pool import translated

ALL_ERRORS = [
    value
    for value in vars(errors).values()
    if isinstance(value, type)
    and issubclass(value, TaskHistoryError)
    and value is not InvalidEventError
]


class TestMessages:
    """Every error says something readable, however Python runs."""

    @pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda error: error.__name__)
    def test_raised_bare_it_says_its_default_message(self, error: type[TaskHistoryError]) -> None:
        """An error raised without a message carries its class's message, not a docstring."""
        assert str(error()) == error.default_message
        assert error.default_message.strip()

    def test_messages_survive_python_dash_oo(self) -> None:
        """Under `python -OO`, which strips docstrings, no error prints "None"."""
        code = (
            "from consumer import errors\n"
            "for name, value in vars(errors).items():\n"
            "    if isinstance(value, type) and issubclass(value, errors.TaskHistoryError)"
            " and value is not errors.InvalidEventError:\n"
            "        print(name, '|', value())\n"
        )
        result = subprocess.run(
            [sys.executable, "-OO", "-c", code], capture_output=True, text=True, check=True
        )
        lines = result.stdout.splitlines()
        assert len(lines) == len(ALL_ERRORS)
        assert not [line for line in lines if line.endswith(("| None", "| "))]

    def test_an_invalid_event_names_its_code_and_detail(self) -> None:
        """InvalidEventError reads as `code: detail`, and keeps both apart for the headers."""
        error = InvalidEventError(ErrorCode.TOO_LARGE, "body is 2 MiB")
        assert str(error) == "too_large: body is 2 MiB"
        assert (error.code, error.detail) == (ErrorCode.TOO_LARGE, "body is 2 MiB")


class TestRetryable:
    """Which errors the consumer waits out is a property of their class."""

    @pytest.mark.parametrize(
        "error",
        [DatabaseUnavailableError, NotMigratedError, DataRejectedError, BrokerUnavailableError],
        ids=lambda error: error.__name__,
    )
    def test_server_errors_are_retried(self, error: type[TaskHistoryError]) -> None:
        """An outage, a missing migration or a refusal by a server may pass: retried."""
        assert error.retryable

    @pytest.mark.parametrize(
        "error",
        [
            TaskHistoryError,
            ConfigurationError,
            NotConnectedError,
            PgCronUnavailableError,
            InvalidEventError,
        ],
        ids=lambda error: error.__name__,
    )
    def test_bugs_and_bad_settings_are_not(self, error: type[TaskHistoryError]) -> None:
        """A client used while closed, or a setting that is wrong, won't fix itself."""
        assert not error.retryable


class TestDriverErrors:
    """The driver's errors become the project's, once, at the store's boundary."""

    @pytest.mark.parametrize(
        "driver_error",
        [
            asyncpg.TargetServerAttributeNotMatched("none of the hosts is a primary"),
            asyncpg.InternalClientError("cannot switch to state 15; another operation (2)"),
            ConnectionRefusedError(111, "Connect call failed"),
        ],
    )
    def test_a_failover_is_an_outage(self, driver_error: Exception) -> None:
        """No primary yet, or a connection broken mid-query by a stopping primary: retried."""
        with pytest.raises(DatabaseUnavailableError) as caught, translated():
            raise driver_error
        assert caught.value.retryable


class TestBrokerClientErrors:
    """The broker client's errors become the project's, once, at the broker's boundary."""

    async def test_a_call_failed_by_a_connection_given_up_is_an_outage(self) -> None:
        """The client's CancelledError for a call on a dropped connection: retried, not a stop."""
        with pytest.raises(BrokerUnavailableError) as caught, translated_errors():
            raise asyncio.CancelledError
        assert caught.value.retryable

    def test_a_call_failed_by_a_closed_channel_is_an_outage(self) -> None:
        """The bare Exception the client fails a call with when its channel closes: retried."""
        with pytest.raises(BrokerUnavailableError) as caught, translated_errors():
            raise Exception  # noqa: TRY002  # exactly what aiormq raises
        assert caught.value.retryable

    def test_an_error_of_our_own_is_not_hidden(self) -> None:
        """Any other exception, a bug of ours, goes on as it is."""
        with pytest.raises(ValueError, match="ours"), translated_errors():
            raise ValueError("ours")

    async def test_a_cancellation_of_the_caller_stays_one(self) -> None:
        """A stop or a timeout cancelling the calling task goes on as a cancellation."""
        entered = asyncio.Event()

        async def call() -> None:
            with translated_errors():
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(call())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await call()
