"""Why a task has no history, and what to do about it, for the commands that read or publish."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from consumer.unknown_tasks import CREATE_MISSING_TASKS, create_task_hint

if TYPE_CHECKING:
    from consumer.settings import Settings
    from consumer.store import Store


@dataclass(frozen=True, slots=True)
class Absence:
    """Why a task has no history: it doesn't exist, and how many of its events were dropped."""

    unknown_task_letters: int | None  # None: the dead letters could not be read


async def absence_of(store: Store, task_id: UUID) -> Absence | None:
    """None if the task exists, or if the tasks can't be read; else its unknown-task letters."""
    from consumer.deadletters import Selection  # noqa: PLC0415  # with the store, at run time
    from consumer.errors import StoreError  # noqa: PLC0415

    # A role that may read the history but not the tasks (a grant made by hand, or a database
    # migrated before the readers could) still reads: it just gets no hint.
    try:
        missing = await store.missing_tasks({task_id})
    except StoreError:
        return None
    if not missing:
        return None
    letters = None
    # A role that may read the history but not the dead letters still gets the rest.
    with contextlib.suppress(StoreError):
        selection = Selection(errors=frozenset({"unknown_task"}), task_id=task_id)
        letters = (await store.dead_letter_extent(selection)).count
    return Absence(unknown_task_letters=letters)


def unknown_task_hint(task_id: UUID, absence: Absence, settings: Settings) -> list[str]:
    """What to tell someone whose task doesn't exist: where its events go, how to create it."""
    wait = f"{settings.unknown_task_retry_seconds:g} s"
    where = (
        f"no task {task_id} exists: the consumer stores events only for tasks that exist;"
        f" events for a task that doesn't exist wait {wait} for it"
        " (TASK_HISTORY_UNKNOWN_TASK_RETRY_SECONDS), then become dead letters."
    )
    how = (
        f"Create the task first: {create_task_hint(task_id)}; or let the consumer create"
        f" tasks: {CREATE_MISSING_TASKS}."
    )
    lines = [where, how]
    if absence.unknown_task_letters:
        lines.append(
            f"{absence.unknown_task_letters} of its events are dead letters (unknown_task):"
            f" once the task exists, `task-history dlq replay --task {task_id} --error"
            " unknown_task` sends them again."
        )
    return lines
