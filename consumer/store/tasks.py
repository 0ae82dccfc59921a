"""Tasks as the console lists them: the most recently active first, and a search of their text."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from consumer.console import RecentTask, TaskCursor, TaskPage
from consumer.store import queries
from consumer.store.pool import StoreBase
from consumer.store.queries import like_pattern

# Past every task: where a walk from the newest starts (no task has a later activity).
_START = TaskCursor(datetime(9999, 12, 31, tzinfo=UTC), UUID(int=2**128 - 1))
# Tasks a search looks at in its first query; each next one looks at twice as many.
_FIRST_LOOK = 64


def task_of(record: asyncpg.Record) -> RecentTask:
    """The recent task a row of task_build_history_counts gives."""
    return RecentTask(
        task_id=record["task_id"],
        entries=record["entries"],
        errors=record["errors"],
        last_activity=record["last_activity"],
    )


class TaskStore(StoreBase):
    """The recent tasks, from the per-task counters the triggers keep."""

    async def recent_tasks(self, *, after: TaskCursor | None = None, limit: int = 50) -> TaskPage:
        """A page of tasks, newest last activity first, after `after` if given."""
        if after is None:
            rows = await self._fetch(queries.RECENT_TASKS_FIRST, limit + 1)
        else:
            rows = await self._fetch(
                queries.RECENT_TASKS_AFTER, limit + 1, after.last_activity, after.task_id
            )
        tasks = [task_of(row) for row in rows[:limit]]
        following = None
        if len(rows) > limit:
            following = TaskCursor(tasks[-1].last_activity, tasks[-1].task_id)
        return TaskPage(tasks, following, examined=len(tasks))

    async def search_tasks(
        self, text: str, *, after: TaskCursor | None = None, limit: int = 50, examine: int
    ) -> TaskPage:
        """Recent tasks with an entry holding `text` (any case), newest first.

        Looks at `examine` tasks at most, in order of activity, each through its own index:
        the page may end before `limit` tasks were found, with a cursor to look further.
        """
        pattern = like_pattern(text)
        found: list[RecentTask] = []
        position = after or _START
        examined = 0
        look = _FIRST_LOOK
        while examined < examine:
            size = min(look, examine - examined)
            rows = await self._fetch(
                queries.SEARCH_TASKS, size, position.last_activity, position.task_id, pattern
            )
            for row in rows:
                examined += 1
                position = TaskCursor(row["last_activity"], row["task_id"])
                if row["hit"]:
                    found.append(task_of(row))
                    if len(found) > limit:
                        last = found[limit - 1]
                        return TaskPage(
                            found[:limit],
                            TaskCursor(last.last_activity, last.task_id),
                            examined=examined,
                        )
            if len(rows) < size:  # every task looked at
                return TaskPage(found, None, examined=examined)
            look *= 2
        return TaskPage(found, position, examined=examined)

    async def task_summary(self, task_id: UUID) -> RecentTask | None:
        """One task's entry count, error count and last activity; None if it never had one."""
        rows = await self._fetch(queries.TASK_SUMMARY, task_id)
        if not rows or rows[0]["last_activity"] is None:
            return None
        return task_of(rows[0])
