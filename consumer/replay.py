"""The dead-letter tools: list, show, replay and purge, losing nothing if killed at any moment."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from consumer.broker.held import HeldQueue
from consumer.deadletters import (
    Census,
    DeadLetter,
    Selection,
    Verdict,
    judge,
    read_dead_letter,
    replay_headers,
)
from consumer.errors import DeadLetterNotFoundError, TaskHistoryError, UnroutableError
from consumer.topology import Topology

# Replayed copies whose confirms are awaited together: enough to hide the round trip, few
# enough that a kill re-sends little (each copy is acked only after its confirm).
SEND_WINDOW = 100

Progress = Callable[[int, int], None]
"""Told (messages looked at, messages in the queue) as a command goes."""


def _quiet(_done: int, _total: int) -> None:
    """No progress shown."""


@dataclass
class Outcome:
    """What a replay or purge did (or, in a dry run, would do)."""

    queue: str
    held: int = 0
    dry_run: bool = False
    cancelled: bool = False
    done: list[DeadLetter] = field(default_factory=list)
    at_max_replays: list[DeadLetter] = field(default_factory=list)
    unroutable: list[tuple[DeadLetter, str]] = field(default_factory=list)

    @property
    def left(self) -> int:
        """Messages that stay in the dead-letter queue."""
        return self.held - (0 if self.dry_run or self.cancelled else len(self.done))


async def census(
    url: str, *, topology: Topology, sample_size: int = 5, progress: Progress = _quiet
) -> Census:
    """Count what the dead-letter queue holds by error code and task; keep the newest few.

    Every message is given back, in its order.
    """
    counted = Census(sample_size=sample_size)
    async with HeldQueue(url, queue=topology.dead_letter_queue) as held:
        async for message in held.messages():
            counted.add(read_dead_letter(message))
            progress(counted.total, held.size)
    return counted


async def find(url: str, *, topology: Topology, message_id: str) -> DeadLetter:
    """The dead letter whose AMQP message_id (or body id) is `message_id`; all are given back."""
    async with HeldQueue(url, queue=topology.dead_letter_queue) as held:
        async for message in held.messages():
            letter = read_dead_letter(message)
            if message_id in (letter.message_id, _body_id(letter)):
                return letter
        raise DeadLetterNotFoundError(
            f"no dead letter has message id {message_id} (looked at {held.size} in"
            f" {topology.dead_letter_queue})"
        )


def _body_id(letter: DeadLetter) -> str | None:
    try:
        body = json.loads(letter.body)
    except (ValueError, RecursionError):
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


async def replay(  # noqa: PLR0913  # each option is one of the command's flags
    url: str,
    *,
    topology: Topology,
    selection: Selection,
    limit: int | None = None,
    max_replays: int | None = 3,
    dry_run: bool = False,
    progress: Progress = _quiet,
) -> Outcome:
    """Send the selected dead letters back to the exchange with their original routing key.

    Each copy keeps the body, properties and message_id, counts one more x-replay-count, and
    is confirmed by the broker before its dead letter is acked: killed at any moment, the
    command loses nothing (a message may be sent twice; the consumer stores it once). What is
    not selected stays in its order.
    """
    outcome = Outcome(queue=topology.dead_letter_queue, dry_run=dry_run)
    try:
        await _replay(
            url,
            topology=topology,
            selection=selection,
            limit=limit,
            max_replays=max_replays,
            progress=progress,
            outcome=outcome,
        )
    except TaskHistoryError as exc:
        exc.add_note(
            f"replay stopped after moving {len(outcome.done)}; the rest stay dead-lettered,"
            " and running it again is safe"
        )
        raise
    return outcome


async def _replay(  # noqa: PLR0913  # replay()'s options, passed on
    url: str,
    *,
    topology: Topology,
    selection: Selection,
    limit: int | None,
    max_replays: int | None,
    progress: Progress,
    outcome: Outcome,
) -> None:
    dry_run = outcome.dry_run
    async with HeldQueue(url, queue=topology.dead_letter_queue) as held:
        outcome.held = held.size
        in_flight: list[tuple[DeadLetter, Coroutine[Any, Any, None]]] = []
        seen = 0
        async for message in held.messages():
            seen += 1
            letter = read_dead_letter(message)
            room = None if limit is None else limit - len(outcome.done) - len(in_flight)
            verdict = judge(letter, selection=selection, max_replays=max_replays, room=room)
            if verdict is Verdict.AT_MAX_REPLAYS:
                outcome.at_max_replays.append(letter)
            elif verdict is Verdict.SEND and dry_run:
                outcome.done.append(letter)
            elif verdict is Verdict.SEND:
                send = held.send(
                    message,
                    exchange=topology.exchange,
                    routing_key=letter.routing_key,
                    headers=replay_headers(letter.headers),
                )
                in_flight.append((letter, send))
                if len(in_flight) >= SEND_WINDOW:
                    await _settle(in_flight, outcome)
            progress(seen, held.size)
            if limit is not None and len(outcome.done) + len(in_flight) >= limit:
                break  # the rest stays where it is
        await _settle(in_flight, outcome)


async def _settle(
    in_flight: list[tuple[DeadLetter, Coroutine[Any, Any, None]]], outcome: Outcome
) -> None:
    """Wait for the copies in flight; record each as sent or unroutable; raise anything else."""
    results = await asyncio.gather(*(send for _, send in in_flight), return_exceptions=True)
    failure: BaseException | None = None
    for (letter, _), result in zip(in_flight, results, strict=True):
        if isinstance(result, UnroutableError):
            outcome.unroutable.append((letter, str(result)))
        elif isinstance(result, BaseException):
            failure = failure or result
        else:
            outcome.done.append(letter)
    in_flight.clear()
    if failure is not None:
        raise failure


async def purge(  # noqa: PLR0913  # each option is one of the command's flags
    url: str,
    *,
    topology: Topology,
    selection: Selection,
    limit: int | None = None,
    dry_run: bool = False,
    confirm: Callable[[int], bool] | None = None,
    progress: Progress = _quiet,
) -> Outcome:
    """Delete the selected dead letters; the others stay in their order.

    `confirm` is asked, with the number of messages in the queue, before anything is deleted;
    answering no deletes nothing.
    """
    outcome = Outcome(queue=topology.dead_letter_queue, dry_run=dry_run)
    async with HeldQueue(url, queue=topology.dead_letter_queue) as held:
        outcome.held = held.size
        # Asked in a thread: the connection keeps its heartbeats while the operator thinks.
        ask = None if dry_run or not held.size else confirm
        if ask is not None and not await asyncio.to_thread(ask, held.size):
            outcome.cancelled = True
            return outcome
        seen = 0
        async for message in held.messages():
            seen += 1
            letter = read_dead_letter(message)
            room = None if limit is None else limit - len(outcome.done)
            if judge(letter, selection=selection, max_replays=None, room=room) is Verdict.SEND:
                if not dry_run:
                    await held.drop(message)
                outcome.done.append(letter)
            progress(seen, held.size)
            if limit is not None and len(outcome.done) >= limit:
                break
    return outcome
