"""Dead letters for the console: a page at a time, counted over time, and who replayed what."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from consumer.api import state as application
from consumer.api.models import ActionPage, DeadLetterPage, DeadLetterTimeline
from consumer.api.routes import ERRORS, JSON, LetterFilters
from consumer.console import Timeline, chart_range
from consumer.errors import InvalidCursorError

router = APIRouter()

MAX_LETTERS = 500
MAX_ACTIONS = 200
_LAST_ID = 2**63 - 1
Filters = Annotated[LetterFilters, Depends()]
After = Annotated[
    str | None, Query(description="The `next` of the previous page: the page after it.")
]


def row_id(name: str, text: str | None) -> int | None:
    """A page cursor that is a row id; InvalidCursorError for anything else."""
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= _LAST_ID):  # noqa: PLR2004  # digits of the largest bigint
        raise InvalidCursorError(f"{name}: {text[:80]!r} is not a cursor this server gave out")
    return int(text)


@router.get(
    "/dead-letters/letters",
    response_model=DeadLetterPage,
    responses=ERRORS,
    tags=["dead letters"],
)
async def letters(
    request: Request,
    filters: Filters,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LETTERS, description=f"Letters per page, 1 to {MAX_LETTERS}.")
    ] = 50,
    after: After = None,
) -> Response:
    """A page of dead letters, newest first, with the filters of `task-history dlq`."""
    store = application.state_of(request).connected_store()
    listed, following = await store.dead_letter_page(
        filters.selection(), before=row_id("after", after), limit=limit
    )
    body = {
        "letters": [letter.to_json() for letter in listed],
        "next": None if following is None else str(following),
    }
    return Response(json.dumps(body, ensure_ascii=False), media_type=JSON)


@router.get(
    "/dead-letters/timeline",
    response_model=DeadLetterTimeline,
    responses=ERRORS,
    tags=["dead letters"],
)
async def timeline(
    request: Request,
    filters: Filters,
    by: Annotated[
        Literal["error", "task"],
        Query(description="Count by error code, or by task (the six largest, and the rest)."),
    ] = "error",
) -> Response:
    """Dead letters per bucket of time (a minute to a week, at most 120 of them), by code or task.

    From `since` (else the oldest selected letter) to `until` (else now).
    """
    store = application.state_of(request).connected_store()
    selection = filters.selection()
    start, end = selection.failed_after, selection.failed_before or datetime.now(UTC)
    if start is None:
        span = await store.dead_letter_span(selection)
        start = None if span is None else span[0]
    if start is None:
        chart = Timeline(by=by, bucket=chart_range(end, end)[0], start=end, buckets=0)
    else:
        bucket, first, count = chart_range(start, end)
        chart = await store.dead_letter_timeline(
            selection, by=by, bucket=bucket, start=first, buckets=count
        )
    return Response(json.dumps(chart.to_json()), media_type=JSON)


@router.get(
    "/dead-letters/actions", response_model=ActionPage, responses=ERRORS, tags=["dead letters"]
)
async def actions(
    request: Request,
    limit: Annotated[
        int, Query(ge=1, le=MAX_ACTIONS, description=f"Actions per page, 1 to {MAX_ACTIONS}.")
    ] = 50,
    after: After = None,
    request_id: Annotated[
        UUID | None,
        Query(description="Only the action a client started with this request id."),
    ] = None,
) -> Response:
    """The record of replays and purges, newest first: `task-history dlq actions --json`."""
    store = application.state_of(request).connected_store()
    body: dict[str, Any]
    if request_id is not None:
        found = await store.action_by_request(request_id)
        body = {"actions": [] if found is None else [found.to_json()], "next": None}
    else:
        page = await store.actions(before=row_id("after", after), limit=limit)
        body = {
            "actions": [action.to_json() for action in page.actions],
            "next": None if page.next is None else str(page.next),
        }
    return Response(json.dumps(body, ensure_ascii=False), media_type=JSON)
