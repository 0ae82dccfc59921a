"""The record of replays and purges (task_build_history_dead_letter_actions): written, read."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from consumer.console import Action, ActionKind, ActionPage, ActionState
from consumer.store import queries
from consumer.store.pool import StoreBase


def action_of(record: asyncpg.Record) -> Action:
    """The action a row of the record holds."""
    return Action(
        id=record["id"],
        action=record["action"],
        started_at=record["started_at"],
        finished_at=record["finished_at"],
        actor=record["actor"],
        via=record["via"],
        database_role=record["database_role"],
        filter=record["filter"],
        selected=record["selected"],
        affected=record["affected"],
        skipped=record["skipped"],
        state=record["state"],
        detail=record["detail"],
        request_id=record["request_id"],
    )


class ActionStore(StoreBase):
    """Starting, finishing and reading the record of replays and purges."""

    async def start_action(  # noqa: PLR0913  # one parameter per column of the record
        self,
        action: ActionKind,
        *,
        actor: str,
        via: str,
        filter_: dict[str, Any],
        selected: int,
        request_id: UUID | None = None,
    ) -> Action:
        """Record that a replay or purge begins; ConcurrencyConflictError for a known request."""
        rows = await self._fetch(
            queries.START_ACTION, action, actor, via, filter_, selected, request_id
        )
        return action_of(rows[0])

    async def finish_action(
        self, action_id: int, *, state: ActionState, skipped: int, detail: str | None = None
    ) -> None:
        """Record how a replay or purge ended (its count grew with each batch already)."""
        await self._execute(queries.FINISH_ACTION, action_id, state, skipped, detail)

    async def actions(self, *, before: int | None = None, limit: int = 50) -> ActionPage:
        """A page of the record, newest first, before id `before` if given."""
        if before is None:
            rows = await self._fetch(queries.ACTIONS_FIRST, limit + 1)
        else:
            rows = await self._fetch(queries.ACTIONS_BEFORE, limit + 1, before)
        actions = [action_of(row) for row in rows[:limit]]
        return ActionPage(actions, actions[-1].id if len(rows) > limit else None)

    async def action(self, action_id: int) -> Action | None:
        """One action of the record, by its id."""
        rows = await self._fetch(queries.ACTION_BY_ID, action_id)
        return action_of(rows[0]) if rows else None

    async def action_by_request(self, request_id: UUID) -> Action | None:
        """The action a client started with this request id, if any."""
        rows = await self._fetch(queries.ACTION_BY_REQUEST, request_id)
        return action_of(rows[0]) if rows else None

    async def may_operate(self) -> bool:
        """Whether this store's role may replay and purge dead letters and record it."""
        return bool(await self._fetchval(queries.MAY_OPERATE))
