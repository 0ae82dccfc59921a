"""The operator routes: replay and purge dead letters over HTTP, on the record.

Present only when `serve` has an operator token (TASK_HISTORY_API_OPERATOR_TOKEN). Before a
request reaches them, consumer.api.security.OperatorGuard has refused any that lacks that
token, isn't JSON, or comes from another site's page. They run the same code as `task-history
dlq replay` and `purge` (consumer.operations), on the operator routes' own database login.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from consumer import operations
from consumer.api import state as application
from consumer.api.models import OperationResult, Problem
from consumer.api.routes import ERRORS, JSON, InvalidParameterError, moment, searched
from consumer.api.security import OPERATOR, token_role
from consumer.broker.signing import HeaderSigner
from consumer.deadletters import ERROR_CODES, Selection
from consumer.errors import DataRejectedError
from consumer.replay import Outcome, Republisher
from consumer.store import Store

router = APIRouter()

_LAST_ID = 2**63 - 1
MAX_IDS = 10_000
# A body's numbers and flags as JSON types them (StrictInt, StrictBool): true is not 1, "5" is
# not 5. The schema says so, and a body that breaks it is refused, not read as it might be meant.
RowId = Annotated[StrictInt, Field(ge=1, le=_LAST_ID)]

_OPERATOR_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {
        "model": Problem,
        "description": "The reader's token (only the operator's may), or a request another"
        " site's page made.",
    },
    409: {"model": Problem, "description": "A request with this request_id was carried out."},
    415: {"model": Problem, "description": "The body is not JSON."},
}


class LetterChoice(BaseModel):
    """Which dead letters: the filters of `task-history dlq`, a list of ids, or both."""

    model_config = ConfigDict(extra="forbid")

    ids: list[RowId] | None = Field(
        default=None, max_length=MAX_IDS, description="Only these letters (their row ids)."
    )
    error: list[str] | None = Field(
        default=None, max_length=len(ERROR_CODES), description="Only these error codes."
    )
    task: UUID | None = Field(default=None, description="Only this task's events.")
    routing_key: str | None = Field(
        default=None, max_length=255, description="Only those first published with this key."
    )
    q: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Only those whose detail or message id holds this text, in any case.",
    )
    since: str | None = Field(
        default=None, max_length=64, description="Only those that failed at or after this."
    )
    until: str | None = Field(
        default=None, max_length=64, description="Only those that failed before this."
    )
    through: StrictInt | None = Field(
        default=None,
        ge=0,
        le=_LAST_ID,
        description="Only letters up to this id: the `through` a dry run gave, so that exactly"
        " the letters counted are taken, not those that arrived since.",
    )
    limit: StrictInt | None = Field(
        default=None, ge=1, le=1_000_000_000, description="At most this many."
    )
    dry_run: StrictBool = Field(
        default=False, description="Only count what the filters choose now, and give `through`."
    )
    request_id: UUID | None = Field(
        default=None,
        description="A key of the client's choosing: the action can be followed while it runs"
        " (GET /dead-letters/actions?request_id=), and is never carried out twice.",
    )

    def selection(self) -> Selection:
        """The letters chosen; InvalidParameterError if the filters can't choose any."""
        unknown = [code for code in self.error or () if code not in ERROR_CODES]
        if unknown:
            raise InvalidParameterError(
                f"body field error: {unknown[0]!r} is not a dead-letter error code; the codes"
                f" are {', '.join(ERROR_CODES)}"
            )
        now = datetime.now(UTC)
        start = moment("since", self.since, now=now)
        end = moment("until", self.until, now=now)
        if start is not None and end is not None and start >= end:
            raise InvalidParameterError("body field since: must be earlier than until")
        return Selection(
            errors=frozenset(self.error or ()),
            task_id=self.task,
            failed_after=start,
            failed_before=end,
            routing_key=searched("routing_key", self.routing_key),
            text=searched("q", self.q),
            ids=frozenset(self.ids or ()),
            through=self.through,
        )


class ReplayRequest(LetterChoice):
    """A replay: which letters, and how often a letter may have been replayed already."""

    max_replays: StrictInt = Field(
        default=3, ge=0, le=1_000_000, description="Leave a letter replayed this many times."
    )


class PurgeRequest(LetterChoice):
    """A purge: which letters; with no filter and no ids, `all` must say so."""

    all: StrictBool = Field(
        default=False, description="Delete every dead letter (no filter given)."
    )


def _operator(request: Request) -> operations.Operator:
    # OperatorGuard let only the operator's token through; checked again, as cheap as it is.
    if token_role(request.scope) != OPERATOR:
        raise HTTPException(403, "this token may read, not replay or purge: use the operator token")
    return operations.Operator(
        name=application.state_of(request).settings.api_operator_name, via="http"
    )


async def _known(store: Store, request_id: UUID | None) -> Response | None:
    """A 409 if a request with this id was carried out already."""
    if request_id is None:
        return None
    done = await store.action_by_request(request_id)
    if done is None:
        return None
    return JSONResponse(
        {"detail": f"request {request_id} was carried out already: action {done.id}"},
        status_code=409,
    )


def _result(
    *, dry_run: bool, selected: int, count: int, through: int | None, outcome: Outcome | None
) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "selected": selected,
        "count": count,
        "through": through,
        "left_behind": {} if outcome is None else operations.left_behind(outcome),
        "left": None if outcome is None else outcome.left,
        "action": None,
    }


async def _preview(store: Store, choice: LetterChoice, selection: Selection) -> Response:
    prepared = await operations.prepare(store, selection, limit=choice.limit)
    body = _result(
        dry_run=True,
        selected=prepared.selected,
        count=prepared.selected,
        through=prepared.selection.through,
        outcome=None,
    )
    return Response(json.dumps(body), media_type=JSON)


@router.post(
    "/dead-letters/replay",
    response_model=OperationResult,
    responses=_OPERATOR_ERRORS,
    tags=["operators"],
)
async def replay(request: Request, choice: ReplayRequest) -> Response:
    """Send dead letters back to the exchange: `task-history dlq replay`, on the record.

    Answers once every chosen letter is sent (each confirmed by the broker) or left.
    """
    operator = _operator(request)
    state = application.state_of(request)
    store = state.operators_store()
    selection = choice.selection()
    if choice.dry_run:
        return await _preview(store, choice, selection)
    if (conflict := await _known(store, choice.request_id)) is not None:
        return conflict
    settings = state.settings
    signer = HeaderSigner(await store.header_key())
    republisher = await Republisher.connect(settings.amqp_url, settings.exchange, signer=signer)
    try:
        action, outcome = await operations.replay_recorded(
            store,
            republisher,
            selection=selection,
            operator=operator,
            limit=choice.limit,
            max_replays=choice.max_replays,
            request_id=choice.request_id,
        )
    except DataRejectedError:
        # Two requests with one request_id at the same moment: the record took the first.
        if (conflict := await _known(store, choice.request_id)) is None:
            raise
        return conflict
    finally:
        await republisher.close()
    return await _done(store, action.id, outcome)


@router.post(
    "/dead-letters/purge",
    response_model=OperationResult,
    responses=_OPERATOR_ERRORS,
    tags=["operators"],
)
async def purge(request: Request, choice: PurgeRequest) -> Response:
    """Delete dead letters for good: `task-history dlq purge`, on the record."""
    operator = _operator(request)
    store = application.state_of(request).operators_store()
    selection = choice.selection()
    if selection.is_everything and not choice.all:
        raise InvalidParameterError(
            'a purge needs a filter, ids, or "all": true to delete every dead letter'
        )
    if choice.all and not selection.is_everything:
        raise InvalidParameterError('"all": true deletes every dead letter: give it no filter')
    if choice.dry_run:
        return await _preview(store, choice, selection)
    if (conflict := await _known(store, choice.request_id)) is not None:
        return conflict
    try:
        action, outcome = await operations.purge_recorded(
            store,
            selection=selection,
            operator=operator,
            limit=choice.limit,
            request_id=choice.request_id,
        )
    except DataRejectedError:
        if (conflict := await _known(store, choice.request_id)) is None:
            raise
        return conflict
    return await _done(store, action.id, outcome)


async def _done(store: Store, action_id: int, outcome: Outcome) -> Response:
    recorded = await store.action(action_id)
    body = _result(
        dry_run=False,
        selected=outcome.selected,
        count=outcome.done.count,
        through=None if recorded is None else recorded.filter.get("through"),
        outcome=outcome,
    )
    if recorded is not None and recorded.action == "purge":
        body["left_behind"] = {}  # a purge leaves nothing it chose
    body["action"] = None if recorded is None else recorded.to_json()
    return Response(json.dumps(body, ensure_ascii=False), media_type=JSON)
