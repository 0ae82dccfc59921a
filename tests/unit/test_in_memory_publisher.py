"""InMemoryPublisher: HistoryPublisher's rules and the consumer's history, with no server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consumer.errors import ErrorCode, HistoryNotSeenError, InvalidEventError
from consumer.testing import (
    InMemoryPublisher,
    publish_and_wait,
    read_history,
    wait_for_entries,
)


def event(task: uuid.UUID | str, content: str = "did something", **fields: Any) -> dict[str, Any]:  # noqa: ANN401
    """A valid event for `task`, with `fields` added or replaced."""
    return {"task_id": task, "context_type": "agent_turn", "content": content, **fields}


def ago(seconds: float) -> str:
    """An RFC 3339 time `seconds` before now."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


class TestValidation:
    """It refuses what HistoryPublisher refuses, before recording anything."""

    async def test_an_invalid_event_raises_and_is_not_recorded(self) -> None:
        """An empty content is an InvalidEventError, as from the real publisher."""
        history = InMemoryPublisher()
        with pytest.raises(InvalidEventError, match="content"):
            await history.publish(event(uuid.uuid4(), ""))
        assert history.published == []

    async def test_publish_many_sends_nothing_when_one_is_invalid(self) -> None:
        """The error names the invalid event's position; none of the others is recorded."""
        history = InMemoryPublisher()
        task = uuid.uuid4()
        with pytest.raises(InvalidEventError, match="event 1: context_type"):
            await history.publish_many([event(task), event(task, context_type="nope")])
        assert history.published == []
        assert await read_history(history, task) == []

    async def test_far_future_is_refused_at_publish(self) -> None:
        """created_at more than 5 minutes ahead is invalid, as the consumer judges it."""
        history = InMemoryPublisher()
        ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        with pytest.raises(InvalidEventError, match="future"):
            await history.publish(event(uuid.uuid4(), created_at=ahead))


class TestTheHistoryItKeeps:
    """What it stores is what the consumer would store."""

    async def test_entries_oldest_first_with_ids_and_created_at(self) -> None:
        """Each publish returns the id; entries come back oldest first, whatever the order sent."""
        history = InMemoryPublisher()
        task = uuid.uuid4()
        late = await history.publish(event(task, "late", created_at=ago(1)))
        early = await history.publish(event(task, "early", created_at=ago(10)))
        entries = await read_history(history, task)
        assert [(e.id, e.content) for e in entries] == [(early, "early"), (late, "late")]
        assert entries[0].expires_at == entries[0].created_at + timedelta(days=20)

    async def test_an_id_is_stored_once(self) -> None:
        """Publishing an event with the same id again records it, and stores nothing new."""
        history = InMemoryPublisher()
        task, given = uuid.uuid4(), uuid.uuid4()
        await history.publish(event(task, "first", id=given))
        await history.publish(event(task, "again", id=given))
        assert len(history.published) == 2
        assert [e.content for e in await read_history(history, task)] == ["first"]

    async def test_the_cap_keeps_the_newest(self) -> None:
        """Past `max_entries_per_task`, the oldest go; ties by arrival, as in the table."""
        history = InMemoryPublisher(max_entries_per_task=3)
        task = uuid.uuid4()
        same = ago(5)
        for n in range(5):
            await history.publish(event(task, f"n{n}", created_at=same))
        await history.publish(event(task, "oldest", created_at=ago(60)))
        assert [e.content for e in await read_history(history, task)] == ["n2", "n3", "n4"]

    async def test_metadata_reads_back_as_an_object(self) -> None:
        """The string form of metadata is stored as the object it holds."""
        history = InMemoryPublisher()
        task = uuid.uuid4()
        await history.publish(event(task, metadata='{"exit_code": 0}'))
        [entry] = await read_history(history, task)
        assert entry.metadata == {"exit_code": 0}


class TestRefusals:
    """What the consumer would dead-letter is listed in `refused`, with its code."""

    async def test_expired_on_arrival(self) -> None:
        """An event older than the retention is refused as `expired`."""
        history = InMemoryPublisher(retention=timedelta(days=1))
        task = uuid.uuid4()
        await history.publish(event(task, created_at=ago(2 * 86400)))
        [refusal] = history.refused
        assert refusal.error is ErrorCode.EXPIRED
        assert await read_history(history, task) == []

    async def test_unknown_task(self) -> None:
        """With `tasks`, an event for another task is refused as `unknown_task`."""
        known, other = uuid.uuid4(), uuid.uuid4()
        history = InMemoryPublisher(tasks=[known])
        await history.publish(event(known))
        await history.publish(event(other))
        assert [r.error for r in history.refused] == [ErrorCode.UNKNOWN_TASK]
        assert str(other) in history.refused[0].detail
        assert len(await read_history(history, known)) == 1

    async def test_missing_tasks_created(self) -> None:
        """`create_missing_tasks` stores it instead, as the consumer's setting does."""
        history = InMemoryPublisher(tasks=[], create_missing_tasks=True)
        task = uuid.uuid4()
        await history.publish(event(task))
        assert history.refused == []
        assert len(await read_history(history, task)) == 1


class TestTheWaitsAcceptIt:
    """consumer.testing's waits read it where they would read a database."""

    async def test_wait_for_entries(self) -> None:
        """wait_for_entries returns what it holds, and fails saying what it saw."""
        history = InMemoryPublisher()
        task = uuid.uuid4()
        await history.publish(event(task, "only one"))
        assert len(await wait_for_entries(history, task, 1)) == 1
        with pytest.raises(HistoryNotSeenError, match=r"it has 1: \[agent_turn: 'only one'\]"):
            await wait_for_entries(history, task, 2, timeout=0.1)

    async def test_publish_and_wait_past_the_cap(self) -> None:
        """150 events on one task: all count as stored, the newest 100 come back."""
        history = InMemoryPublisher()
        task = uuid.uuid4()
        events = [event(task, f"n{n}", created_at=ago(200 - n)) for n in range(150)]
        entries = await publish_and_wait(events, database=history, timeout=1)
        assert [e.content for e in entries] == [f"n{n}" for n in range(50, 150)]

    async def test_publish_and_wait_names_refused_events(self) -> None:
        """An event refused as unknown_task is missing, and the failure names it."""
        history = InMemoryPublisher(tasks=[])
        given = uuid.uuid4()
        with pytest.raises(HistoryNotSeenError, match=f"are not: {given}"):
            await publish_and_wait([event(uuid.uuid4(), id=given)], database=history, timeout=0.1)


class TestTaskIdsAsText:
    """A task id given as text is the same task as its UUID, as in the database."""

    async def test_the_waits_find_a_task_named_by_text(self) -> None:
        """Published with a str task id, read and waited for by str or UUID alike."""
        history = InMemoryPublisher()
        task = uuid.uuid4()
        await history.publish(event(str(task)))
        assert len(await wait_for_entries(history, str(task), 1, timeout=0.1)) == 1
        assert len(await read_history(history, str(task).upper())) == 1
        assert len(await read_history(history, task)) == 1
        assert await history.received_by_tasks([str(task)]) == {task: 1}

    async def test_known_tasks_given_as_text(self) -> None:
        """`tasks` given as text knows the task an event names by UUID."""
        task = uuid.uuid4()
        history = InMemoryPublisher(tasks=[str(task)])
        await history.publish(event(task))
        assert history.refused == []

    async def test_a_task_id_that_is_not_a_uuid_says_so(self) -> None:
        """A malformed id is a ValueError naming it, not an empty history."""
        with pytest.raises(ValueError, match="not a UUID: 'task-1'"):
            await read_history(InMemoryPublisher(), "task-1")


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "publishing.md"


class TestTheGuideExample:
    """The publishing guide's example of InMemoryPublisher runs as written."""

    async def test_it_passes_against_an_agent_that_reports_a_failure(self) -> None:
        """Its test function, given an agent that publishes one error, passes."""
        section = GUIDE.read_text().split("### Without servers: `InMemoryPublisher`", 1)[1]
        code = section.split("```python\n", 1)[1].split("```", 1)[0]

        async def run_agent(task_id: uuid.UUID, *, publisher: InMemoryPublisher) -> None:
            await publisher.publish(event(task_id, "tests failed", context_type="error"))

        namespace: dict[str, Any] = {"run_agent": run_agent}
        exec(compile(code, "docs/publishing.md", "exec"), namespace)  # noqa: S102  # the guide's code
        await namespace["test_the_agent_reports_a_failure"](uuid.uuid4())
