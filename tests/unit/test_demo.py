"""The demo's agents: one failing stops the others, and the failure is raised as itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from types import TracebackType
from typing import Any, Self

import pytest

from consumer.demo import run_demo
from consumer.errors import BrokerUnavailableError
from tests.unit.test_pipeline import quick_settings


class FailingPublisher:
    """Publishes in memory; the `fail_at`-th publish raises BrokerUnavailableError."""

    def __init__(self, *_args: Any, fail_at: int = 5, **_options: Any) -> None:  # noqa: ANN401  # HistoryPublisher's
        """Count publishes from none."""
        self.fail_at = fail_at
        self.published: list[dict[str, Any]] = []
        # Set by the test once the demo has ended: a publish after that is an agent left behind.
        self.ended = False
        self.after_the_end = 0

    async def __aenter__(self) -> Self:
        """Nothing to connect."""
        return self

    async def __aexit__(
        self,
        _kind: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        """Nothing to close."""

    async def publish(self, body: dict[str, Any]) -> uuid.UUID:
        """Record `body`, or fail once its turn comes."""
        if self.ended:
            self.after_the_end += 1
        if len(self.published) + 1 == self.fail_at:
            raise BrokerUnavailableError("broker unavailable: the connection was reset")
        self.published.append(body)
        await asyncio.sleep(0)
        return uuid.uuid4()


class NoStore:
    """Creates tasks in memory."""

    def __init__(self, *_args: Any, **_options: Any) -> None:  # noqa: ANN401  # Store's
        """No tasks yet."""
        self.tasks: set[uuid.UUID] = set()

    async def __aenter__(self) -> Self:
        """Nothing to open."""
        return self

    async def __aexit__(
        self,
        _kind: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        """Nothing to close."""

    async def create_task(self, task_id: uuid.UUID) -> None:
        """Add the task."""
        self.tasks.add(task_id)

    async def create_tasks(self, task_ids: Collection[uuid.UUID]) -> None:
        """Add the tasks."""
        self.tasks |= set(task_ids)


class TestAnAgentFails:
    """A publish failing in one agent ends the demo with that error; the others stop."""

    async def test_the_first_failure_is_raised_and_the_rest_stop(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """BrokerUnavailableError itself (not a group), and no agent publishes after the end."""
        publisher = FailingPublisher(fail_at=5)
        monkeypatch.setattr("consumer.demo.HistoryPublisher", lambda *_a, **_k: publisher)
        monkeypatch.setattr("consumer.demo.Store", NoStore)
        with pytest.raises(BrokerUnavailableError, match="connection was reset"):
            await run_demo(quick_settings(), agents=3, rate=1000, count=None, stop=asyncio.Event())
        publisher.ended = True
        await asyncio.sleep(0.05)  # an agent left running would publish meanwhile
        assert publisher.after_the_end == 0
