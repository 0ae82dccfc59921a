"""The routes the console browses with: recent tasks, a search of them, counts by kind."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from consumer.api import state as application
from consumer.api.models import TaskList, TypeCounts
from consumer.api.routes import (
    ERRORS,
    JSON,
    InvalidParameterError,
    SearchText,
    Since,
    Until,
    moment,
    searched,
)
from consumer.console import TaskCursor
from consumer.errors import InvalidCursorError
from consumer.pages import HistoryQuery

router = APIRouter()

MAX_TASKS = 500


def _task_cursor(text: str | None) -> TaskCursor | None:
    if text is None:
        return None
    try:
        return TaskCursor.decode(text)
    except InvalidCursorError:
        raise InvalidCursorError(
            f"after: {text[:80]!r} is not a cursor this server gave out"
        ) from None


@router.get("/tasks", response_model=TaskList, responses=ERRORS, tags=["tasks"])
async def recent_tasks(
    request: Request,
    *,
    limit: Annotated[
        int, Query(ge=1, le=MAX_TASKS, description=f"Tasks per page, 1 to {MAX_TASKS}.")
    ] = 50,
    after: Annotated[
        str | None, Query(description="The `next` cursor of the previous page.")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="Only tasks with an entry whose content holds this text, in any case."
            " A page looks at a bounded number of tasks (TASK_HISTORY_API_SEARCH_TASKS_PER_PAGE):"
            " it may hold fewer than `limit`, even none, with a `next` to look further.",
        ),
    ] = None,
) -> Response:
    """Tasks newest activity first: entries stored, errors among them, last activity."""
    state = application.state_of(request)
    store = state.connected_store()
    cursor = _task_cursor(after)
    text = searched("q", q)
    if text is None:
        page = await store.recent_tasks(after=cursor, limit=limit)
    else:
        page = await store.search_tasks(
            text, after=cursor, limit=limit, examine=state.settings.api_search_tasks_per_page
        )
    body = {
        "tasks": [task.to_json() for task in page.tasks],
        "next": None if page.next is None else page.next.encode(),
        "examined": page.examined,
    }
    return Response(json.dumps(body), media_type=JSON)


async def _counts(request: Request, query: HistoryQuery) -> Response:
    store = application.state_of(request).connected_store()
    counts = await store.count_by_type(query)
    body: dict[str, Any] = {"total": sum(counts.values()), "by_type": counts}
    return Response(json.dumps(body), media_type=JSON)


def _counted(  # noqa: PLR0913  # the subject and the three filters
    since: str | None,
    until: str | None,
    q: str | None,
    *,
    task_id: UUID | None = None,
    workspace_id: UUID | None = None,
    session_id: UUID | None = None,
) -> HistoryQuery:
    now = datetime.now(UTC)
    start = moment("since", since, now=now)
    end = moment("until", until, now=now)
    if start is not None and end is not None and start >= end:
        raise InvalidParameterError("query parameter since: must be earlier than until")
    return HistoryQuery(
        task_id=task_id,
        workspace_id=workspace_id,
        session_id=session_id,
        since=start,
        until=end,
        text=searched("q", q),
    )


@router.get(
    "/tasks/{task_id}/history/counts",
    response_model=TypeCounts,
    responses=ERRORS,
    tags=["history"],
)
async def task_counts(
    request: Request, task_id: UUID, since: Since = None, until: Until = None, q: SearchText = None
) -> Response:
    """How many of a task's entries there are of each context type, over all its pages."""
    return await _counts(request, _counted(since, until, q, task_id=task_id))


@router.get(
    "/workspaces/{workspace_id}/history/counts",
    response_model=TypeCounts,
    responses=ERRORS,
    tags=["history"],
)
async def workspace_counts(
    request: Request,
    workspace_id: UUID,
    since: Since = None,
    until: Until = None,
    q: SearchText = None,
) -> Response:
    """How many of a workspace's entries there are of each context type."""
    return await _counts(request, _counted(since, until, q, workspace_id=workspace_id))


@router.get(
    "/sessions/{session_id}/history/counts",
    response_model=TypeCounts,
    responses=ERRORS,
    tags=["history"],
)
async def session_counts(
    request: Request,
    session_id: UUID,
    since: Since = None,
    until: Until = None,
    q: SearchText = None,
) -> Response:
    """How many of a session's entries there are of each context type."""
    return await _counts(request, _counted(since, until, q, session_id=session_id))
