"""A demo stream: a few simulated agents working through tasks, published like real agents."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from consumer.events import new_event_id
from consumer.publisher import HistoryPublisher
from consumer.settings import Settings
from consumer.store import Store

log = structlog.get_logger("demo")

_FILES = ("src/app.py", "src/models.py", "src/api/routes.py", "tests/test_app.py", "README.md")
_ASKS = (
    "add pagination to the task list",
    "fix the flaky login test",
    "rename the config module and update its imports",
    "make the export handle empty workspaces",
)


@dataclass(frozen=True, slots=True)
class Assignment:
    """One task an agent works on, in one session of one workspace."""

    agent: str
    task_id: uuid.UUID
    session_id: uuid.UUID
    workspace_id: uuid.UUID


def story(rng: random.Random, work: Assignment) -> list[dict[str, Any]]:
    """The events of one task from start to finish, as an agent would publish them."""
    ask = rng.choice(_ASKS)

    def event(context_type: str, content: str, **metadata: object) -> dict[str, Any]:
        return {
            "id": str(new_event_id()),
            "task_id": str(work.task_id),
            "workspace_id": str(work.workspace_id),
            "session_id": str(work.session_id),
            "context_type": context_type,
            "content": content,
            "metadata": {"agent": work.agent, **metadata} if metadata else {"agent": work.agent},
        }

    events = [
        event("status_change", "queued → running", status="running"),
        event(
            "setup_complete", "workspace ready: dependencies installed", seconds=rng.randint(5, 90)
        ),
        event("chat_message", f"user: {ask}", role="user"),
    ]
    for turn in range(rng.randint(3, 12)):
        events.append(
            event("agent_turn", f"turn {turn + 1}: planning the next change", turn=turn + 1)
        )
        path = rng.choice(_FILES)
        added, removed = rng.randint(1, 80), rng.randint(0, 30)
        events.append(
            event("execution_step", f"edited {path} (+{added} -{removed})", tool="edit", path=path)
        )
        passed = rng.randint(10, 300)
        if rng.random() < 0.15:  # noqa: PLR2004  # about one run in seven fails
            events.append(
                event("error", f"pytest: 1 failed, {passed} passed", tool="pytest", exit_code=1)
            )
        else:
            events.append(
                event("execution_step", f"ran pytest: {passed} passed", tool="pytest", exit_code=0)
            )
    events.append(event("chat_message", f"agent: done — {ask}", role="assistant"))
    events.append(event("status_change", "running → review", status="review"))
    return events


async def run_demo(  # noqa: PLR0913  # keyword-only options
    settings: Settings,
    *,
    agents: int,
    rate: float,
    count: int | None,
    stop: asyncio.Event,
    started: Callable[[], None] = lambda: None,
) -> int:
    """Publish from `agents` simulated agents, `rate` events/s each, until stopped or `count`.

    Each agent creates its task rows first (as the host application would), then publishes
    that task's story through the real publishing path. `started()` is called once both
    servers are connected. Returns how many events were sent.
    """
    sent = 0
    done = asyncio.Event()

    async def agent(name: str, publisher: HistoryPublisher, store: Store) -> None:
        nonlocal sent
        rng = random.Random()  # noqa: S311  # a demo's variety, not cryptography
        workspace = uuid.uuid4()
        while not done.is_set():
            work = Assignment(name, uuid.uuid4(), uuid.uuid4(), workspace)
            await store.create_task(work.task_id)
            log.info("agent starts a task", agent=name, task_id=str(work.task_id))
            for body in story(rng, work):
                if done.is_set():
                    return
                sent += 1  # counted before the await: agents run concurrently
                if count is not None and sent >= count:
                    done.set()
                await publisher.publish(body)
                await _pause(rng.expovariate(rate), done)

    async def watch_stop() -> None:
        await stop.wait()
        done.set()

    async with (
        HistoryPublisher(settings.amqp_url, exchange=settings.exchange) as publisher,
        Store(settings.database_url, max_connections=2) as store,
    ):
        watcher = asyncio.create_task(watch_stop())
        started()
        try:
            # One agent failing stops the others before the clients they share are closed.
            async with asyncio.TaskGroup() as group:
                for n in range(agents):
                    group.create_task(agent(f"agent-{n + 1}", publisher, store))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure, as one error line says
        finally:
            watcher.cancel()
    return sent


async def _pause(seconds: float, done: asyncio.Event) -> None:
    """Sleep, cut short when the demo ends."""
    try:
        async with asyncio.timeout(seconds):
            await done.wait()
    except TimeoutError:
        pass
