"""An operator's replay or purge, on the record: the one path `task-history dlq` and serve take.

Each run is a row of task_build_history_dead_letter_actions, written before the first letter
moves: who (an operator token's name, or the operating-system user of a command), the filter,
how many it chose. Its count of letters moved or deleted grows in the transaction of each
batch (consumer.replay passes the action on to the store), and its end is recorded: finished,
with how many were left, or failed, with why. A run killed midway stays `running` with the
exact count it committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Literal
from uuid import UUID

from consumer import replay
from consumer.console import Action
from consumer.deadletters import Selection
from consumer.replay import Outcome, Progress, Republisher, Tally
from consumer.store import Store

Via = Literal["http", "command"]


@dataclass(frozen=True, slots=True)
class Operator:
    """Who acts, as the record names them, and how they reached the letters."""

    name: str
    via: Via


def command_user() -> Operator:
    """The operating-system user running a `task-history dlq` command."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        name = f"uid {os.getuid()}"
    return Operator(name=name, via="command")


def left_behind(outcome: Outcome) -> dict[str, int]:
    """The letters a run chose but left, by reason: every tally of the outcome but `done`."""
    return {
        item.name: getattr(outcome, item.name).count
        for item in fields(outcome)
        if item.name != "done" and isinstance(getattr(outcome, item.name), Tally)
    }


@dataclass(frozen=True, slots=True)
class Prepared:
    """A run about to start: its selection pinned to the letters there now, and their count."""

    selection: Selection
    selected: int


async def prepare(store: Store, selection: Selection, *, limit: int | None) -> Prepared:
    """Count the letters `selection` chooses now; pin it to them (up to the newest id)."""
    extent = await store.dead_letter_extent(selection)
    through = extent.last if extent.last is not None else 0
    if selection.through is not None:
        through = min(through, selection.through)
    chosen = extent.count if limit is None else min(limit, extent.count)
    return Prepared(replace(selection, through=through), chosen)


async def replay_recorded(  # noqa: PLR0913  # each option is one of the command's flags
    store: Store,
    republisher: Republisher,
    *,
    selection: Selection,
    operator: Operator,
    limit: int | None = None,
    max_replays: int | None = 3,
    progress: Progress | None = None,
    request_id: UUID | None = None,
) -> tuple[Action, Outcome]:
    """Replay the selected letters (consumer.replay.replay), on the record."""
    prepared = await prepare(store, selection, limit=limit)
    options: dict[str, Any] = {"limit": limit, "max_replays": max_replays}
    action = await _start(store, "replay", prepared, operator, options, request_id=request_id)
    try:
        outcome = await replay.replay(
            store,
            republisher,
            selection=prepared.selection,
            limit=limit,
            max_replays=max_replays,
            progress=progress,
            action=action.id,
        )
    except BaseException as exc:
        await _failed(store, action, exc)
        raise
    await store.finish_action(
        action.id, state="finished", skipped=sum(left_behind(outcome).values())
    )
    return action, outcome


async def purge_recorded(  # noqa: PLR0913  # each option is one of the command's flags
    store: Store,
    *,
    selection: Selection,
    operator: Operator,
    limit: int | None = None,
    through: int | None = None,
    progress: Progress | None = None,
    request_id: UUID | None = None,
) -> tuple[Action, Outcome]:
    """Delete the selected letters (consumer.replay.purge), up to id `through`, on the record."""
    if through is not None:
        shown = through if selection.through is None else min(through, selection.through)
        selection = replace(selection, through=shown)
    prepared = await prepare(store, selection, limit=limit)
    action = await _start(
        store, "purge", prepared, operator, {"limit": limit}, request_id=request_id
    )
    try:
        outcome = await replay.purge(
            store,
            selection=prepared.selection,
            limit=limit,
            through=prepared.selection.through,
            progress=progress,
            action=action.id,
        )
    except BaseException as exc:
        await _failed(store, action, exc)
        raise
    await store.finish_action(action.id, state="finished", skipped=0)
    return action, outcome


async def _start(  # noqa: PLR0913  # what the record holds
    store: Store,
    kind: Literal["replay", "purge"],
    prepared: Prepared,
    operator: Operator,
    options: dict[str, Any],
    *,
    request_id: UUID | None,
) -> Action:
    given = {name: value for name, value in options.items() if value is not None}
    return await store.start_action(
        kind,
        actor=operator.name,
        via=operator.via,
        filter_=prepared.selection.to_json() | given,
        selected=prepared.selected,
        request_id=request_id,
    )


async def _failed(store: Store, action: Action, exc: BaseException) -> None:
    """Record that a run stopped, and why; never raises (the run's own error goes on)."""
    reason = "stopped before it finished" if isinstance(exc, asyncio.CancelledError) else str(exc)
    with contextlib.suppress(Exception):
        await asyncio.shield(
            store.finish_action(action.id, state="failed", skipped=0, detail=reason[:1000])
        )
