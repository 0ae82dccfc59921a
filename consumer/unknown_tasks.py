"""What to tell someone whose events name a task that doesn't exist: how to create it."""

from __future__ import annotations

from uuid import UUID

# The setting that makes the consumer create missing tasks itself, as it is set.
CREATE_MISSING_TASKS = "TASK_HISTORY_CREATE_MISSING_TASKS=true"


def create_task_hint(task_id: UUID) -> str:
    """The ways to create the task `task_id`: SQL, Python, or the command line."""
    row = f"INSERT INTO tasks (id) VALUES ('{task_id}')"  # noqa: S608  # text shown, not run
    return (
        f"{row}, Store.create_task in Python, or `task-history publish --create-task"
        f" --task {task_id} ...`"
    )
