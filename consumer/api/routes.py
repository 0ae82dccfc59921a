"""The routes of the read API: history pages, the live stream, dead letters, health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from consumer.api import state as application
from consumer.api.feeds import Arrival, Watcher
from consumer.api.models import (
    DeadLetterCensus,
    DeadLetterMessage,
    Health,
    HistoryPage,
    Problem,
)
from consumer.deadletters import ERROR_CODES, Selection, shown
from consumer.entries import ContextType, HistoryEntry
from consumer.errors import InvalidCursorError, StoreError
from consumer.moments import parse_moment
from consumer.pages import Cursor, HistoryQuery

log = structlog.get_logger()
router = APIRouter()

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# How long an EventSource waits before reconnecting, in ms (the stream's `retry:` field).
RECONNECT_MS = 2000
JSON = "application/json"

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "A cursor this server did not give out."},
    401: {"model": Problem, "description": "The bearer token is missing or wrong."},
    422: {"model": Problem, "description": "A parameter is out of range or malformed."},
    503: {"model": Problem, "description": "The database does not answer."},
}

Limit = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description=f"Entries per page, 1 to {MAX_LIMIT}."),
]
After = Annotated[
    str | None,
    Query(description="The `next` cursor of the previous page: the page after it."),
]
Types = Annotated[
    list[ContextType] | None,
    Query(alias="type", description="Only entries of this context type (repeat for several)."),
]
Since = Annotated[
    str | None,
    Query(
        description="Only entries created at or after this: RFC 3339 with an offset, or an age"
        " such as 30m, 2h, 3d."
    ),
]
Until = Annotated[
    str | None,
    Query(description="Only entries created before this: RFC 3339 with an offset, or an age."),
]
NewestFirst = Annotated[bool, Query(description="Newest entries first (default: oldest first).")]


class InvalidParameterError(ValueError):
    """A query parameter that passed its type but not the rules: a 422 with this message."""


class _EventStream(StreamingResponse):
    """A stream whose watch ends with the response, even one that never sent a byte.

    The watch is entered in the route, before the response exists. A client that leaves
    before the body starts makes Starlette cancel it before the body's first step, so the
    body's own `finally` would never run: the response closes the watch itself.
    """

    def __init__(self, content: AsyncIterator[str], *, stack: AsyncExitStack) -> None:
        """Stream `content` as Server-Sent Events; close `stack` when the response ends."""
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._stack = stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; whatever ends it, end the watch."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stack.aclose()


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """Alive: the process answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database does not answer."}},
    tags=["health"],
)
async def readyz(request: Request) -> JSONResponse:
    """Ready: the database answers (within 2 s)."""
    state = application.state_of(request)
    try:
        await state.connected_store().ping(within=2)
    except StoreError as exc:
        return JSONResponse({"status": f"not ready: {exc}"}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _page(request: Request, query: HistoryQuery) -> Response:
    """A page as JSON, stopped at `limit` entries or at the byte budget, whichever comes first.

    The budget is applied by the database: a page of large entries costs about its budget in
    memory, not `limit` times the largest entry.
    """
    state = application.state_of(request)
    page = await state.connected_store().find_page(
        query, max_bytes=state.settings.api_page_max_bytes
    )
    if page.cut:
        state.metrics.page_cut.inc()
    body = HistoryPage(entries=page.entries, next=None if page.next is None else page.next.encode())
    return Response(body.model_dump_json(), media_type=JSON)


@dataclass(frozen=True, kw_only=True)
class PageParameters:
    """The query parameters every history route takes: the page size, cursor and filters."""

    limit: Limit = DEFAULT_LIMIT
    after: After = None
    types: Types = None
    since: Since = None
    until: Until = None
    newest_first: NewestFirst = False

    def query(
        self,
        *,
        task_id: UUID | None = None,
        workspace_id: UUID | None = None,
        session_id: UUID | None = None,
    ) -> HistoryQuery:
        """The read they ask for, of this subject; InvalidCursorError or InvalidParameterError."""
        now = datetime.now(UTC)
        start = _moment("since", self.since, now=now)
        end = _moment("until", self.until, now=now)
        if start is not None and end is not None and start >= end:
            raise InvalidParameterError("query parameter since: must be earlier than until")
        cursor = None if self.after is None else _cursor("after", self.after)
        if cursor is not None and cursor.newest_first != self.newest_first:
            order = "newest first" if cursor.newest_first else "oldest first"
            raise InvalidCursorError(
                f"query parameter after: the cursor belongs to a read {order}: set newest_first"
                " as that read did"
            )
        return HistoryQuery(
            task_id=task_id,
            workspace_id=workspace_id,
            session_id=session_id,
            context_types=tuple(dict.fromkeys(self.types or ())),
            since=start,
            until=end,
            newest_first=self.newest_first,
            limit=self.limit,
            after=cursor,
        )


Pages = Annotated[PageParameters, Depends()]


def _moment(name: str, value: str | None, *, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_moment(value, now=now)
    except ValueError as exc:
        raise InvalidParameterError(f"query parameter {name}: {exc}") from None


def _cursor(name: str, text: str) -> Cursor:
    try:
        return Cursor.decode(text)
    except InvalidCursorError:
        raise InvalidCursorError(
            f"{name}: {text[:80]!r} is not a cursor this server gave out"
        ) from None


@router.get(
    "/tasks/{task_id}/history", response_model=HistoryPage, responses=_ERRORS, tags=["history"]
)
async def task_history(request: Request, task_id: UUID, pages: Pages) -> Response:
    """A page of a task's entries, oldest first; an unknown task has none (200, empty)."""
    return await _page(request, pages.query(task_id=task_id))


@router.get(
    "/workspaces/{workspace_id}/history",
    response_model=HistoryPage,
    responses=_ERRORS,
    tags=["history"],
)
async def workspace_history(request: Request, workspace_id: UUID, pages: Pages) -> Response:
    """A page of a workspace's entries across its tasks, oldest first."""
    return await _page(request, pages.query(workspace_id=workspace_id))


@router.get(
    "/sessions/{session_id}/history",
    response_model=HistoryPage,
    responses=_ERRORS,
    tags=["history"],
)
async def session_history(request: Request, session_id: UUID, pages: Pages) -> Response:
    """A page of a session's entries, oldest first."""
    return await _page(request, pages.query(session_id=session_id))


@router.get(
    "/tasks/{task_id}/history/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: each new entry as `id: CURSOR` and"
            " `data: ENTRY JSON`; a `: keep-alive` comment while idle.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **_ERRORS,
    },
    tags=["history"],
)
async def task_stream(
    request: Request,
    *,
    task_id: UUID,
    last_event_id: Annotated[
        str | None,
        Header(description="Resume: what arrived after this entry first, then new ones."),
    ] = None,
    after: Annotated[
        str | None, Query(description="The same as Last-Event-ID, for a first connection.")
    ] = None,
    from_start: Annotated[
        bool, Query(description="Without a cursor: the task's current entries first.")
    ] = False,
) -> StreamingResponse:
    """A task's new entries as they are stored, as Server-Sent Events, until the client leaves."""
    state = application.state_of(request)
    store = state.connected_store()
    given = last_event_id or after
    resume = None if not given else _cursor("Last-Event-ID" if last_event_id else "after", given)
    stack = AsyncExitStack()
    # Watching starts before the response does: whatever is stored once the client has the
    # response's headers reaches it.
    watcher = await stack.enter_async_context(state.feeds.watch(task_id))
    state.metrics.streams.inc()
    stack.callback(state.metrics.streams.dec)
    # A feed shared with other watchers may still hand out entries the client had before it
    # reconnected: those up to the resume cursor are not sent again.
    resumed_at = -1 if resume is None else resume.seq

    async def events() -> AsyncIterator[str]:
        try:
            yield f"retry: {RECONNECT_MS}\n\n"
            sent: set[UUID] = set()
            if resume is not None or from_start:
                backlog = await store.arrivals(
                    task_id, after_seq=None if resume is None else resume.seq
                )
                for earlier in backlog:
                    sent.add(earlier[0].id)
                    yield _event(earlier)
            async for arrival in _live(watcher, keepalive=state.settings.api_keepalive_seconds):
                if arrival is None:
                    yield ": keep-alive\n\n"
                elif arrival[0].id not in sent and arrival[1].seq > resumed_at:
                    yield _event(arrival)
            if watcher.reason is not None:
                # A comment: readers (EventSource, the page) ignore it; a person sees why.
                yield f": dropped: {watcher.reason}\n\n"
        except StoreError as exc:
            # The headers are sent: the stream just ends, and the client reconnects.
            log.warning("stream ended", task_id=str(task_id), error=str(exc))

    return _EventStream(events(), stack=stack)


async def _live(watcher: Watcher, *, keepalive: float) -> AsyncIterator[Arrival | None]:
    """The watcher's entries as they come, and None after each `keepalive` s without one."""
    while True:
        try:
            arrival = await watcher.next(within=keepalive)
        except TimeoutError:
            yield None
            continue
        if arrival is None:
            return
        yield arrival


def _event(arrival: tuple[HistoryEntry, Cursor]) -> str:
    entry, cursor = arrival
    return f"id: {cursor.encode()}\ndata: {entry.model_dump_json()}\n\n"


ErrorCodes = Annotated[
    list[str] | None,
    Query(
        alias="error", description=f"Only this error code (repeatable): {', '.join(ERROR_CODES)}."
    ),
]


@dataclass(frozen=True, kw_only=True)
class DeadLetterFilters:
    """The query parameters of /dead-letters: which dead letters, and how many of the newest."""

    errors: ErrorCodes = None
    task: Annotated[UUID | None, Query(description="Only this task's events.")] = None
    since: Annotated[str | None, Query(description="Only those that failed at or after this.")] = (
        None
    )
    until: Annotated[str | None, Query(description="Only those that failed before this.")] = None
    sample: Annotated[int, Query(ge=0, le=100, description="How many of the newest to show.")] = 5

    def selection(self) -> Selection:
        """The dead letters they select; InvalidParameterError if they can't."""
        errors = self.errors or []
        unknown = [code for code in errors if code not in ERROR_CODES]
        if unknown:
            raise InvalidParameterError(
                f"query parameter error: {unknown[0]!r} is not a dead-letter error code; the"
                f" codes are {', '.join(ERROR_CODES)}"
            )
        now = datetime.now(UTC)
        return Selection(
            errors=frozenset(errors),
            task_id=self.task,
            failed_after=_moment("since", self.since, now=now),
            failed_before=_moment("until", self.until, now=now),
        )


@router.get(
    "/dead-letters", response_model=DeadLetterCensus, responses=_ERRORS, tags=["dead letters"]
)
async def dead_letters(
    request: Request, filters: Annotated[DeadLetterFilters, Depends()]
) -> Response:
    """The dead letters counted by error code and task, and the newest few: `dlq list --json`."""
    store = application.state_of(request).connected_store()
    census = await store.dead_letter_census(filters.selection(), newest=filters.sample)
    return Response(json.dumps(census.to_json(), ensure_ascii=False), media_type=JSON)


@router.get(
    "/dead-letters/{key}",
    response_model=DeadLetterMessage,
    responses={404: {"model": Problem, "description": "No such dead letter."}, **_ERRORS},
    tags=["dead letters"],
)
async def dead_letter(request: Request, key: str) -> Response:
    """One dead letter whole, by row id or message id: `dlq show`."""
    store = application.state_of(request).connected_store()
    letter = await store.dead_letter(key)
    if letter is None:
        return JSONResponse(
            {"detail": f"no dead letter has id or message id {key[:100]}"}, status_code=404
        )
    return Response(json.dumps(shown(letter), ensure_ascii=False), media_type=JSON)
