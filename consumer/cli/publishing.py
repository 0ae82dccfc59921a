"""Producing events: publish them to the exchange, or print the schema they follow."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO
from uuid import UUID

import click

from consumer import schema as schema_module
from consumer.cli.context import Command, run_async, settings_from
from consumer.cli.hints import absence_of, unknown_task_hint
from consumer.cli.options import json_object_option, json_option, print_json
from consumer.cli.progress import counting
from consumer.entries import ContextType
from consumer.errors import InvalidEventError, TaskHistoryError
from consumer.inert import inert
from consumer.settings import Settings

if TYPE_CHECKING:
    from consumer.entries import HistoryEntry
    from consumer.publisher import OutgoingEvent
    from consumer.store import Store

# How long `publish --wait` waits for the consumer to store the event.
WAIT_SECONDS = 30


@click.command(cls=Command)
@click.option("--task", "task_id", type=click.UUID, help="The task the event belongs to.")
@click.option(
    "--type",
    "context_type",
    type=click.Choice([context_type.value for context_type in ContextType]),
    help="Its context type.",
)
@click.option("--content", help="Its content.")
@click.option("--metadata", metavar="JSON", callback=json_object_option, help="A JSON object.")
@click.option("--workspace", "workspace_id", type=click.UUID, help="Its workspace.")
@click.option("--session", "session_id", type=click.UUID, help="Its session.")
@click.option(
    "--file",
    "source",
    type=click.File("rb"),
    help="Events from a JSON Lines file, one per line; - reads stdin.",
)
@click.option(
    "--create-task",
    is_flag=True,
    help="Create the task in the database first, if it doesn't exist (events for a task"
    " that doesn't exist are not stored).",
)
@click.option(
    "--wait",
    is_flag=True,
    help=f"Wait (up to {WAIT_SECONDS} s) until the consumer has stored the event; print it.",
)
@json_option
@click.pass_context
def publish(
    ctx: click.Context,
    /,
    *,
    source: BinaryIO | None,
    create_task: bool,
    wait: bool,
    as_json: bool,
    **fields: Any,  # noqa: ANN401  # the flags
) -> None:
    """Publish events to the history exchange, validated and confirmed.

    One event from --task, --type and --content (and optionally --metadata, --workspace,
    --session): prints its id; with --wait, then the entry once stored. Or many from --file: a
    bad line is reported on stderr as `line N: reason` and skipped, the rest are sent, and a
    last line says `sent N, refused M`; the exit status is 1 when any line was refused. With
    --json the result is one object: {"id": ...} (and "entry" with --wait), or {"sent": N,
    "refused": M}.

    The consumer stores events only for tasks that exist: --create-task creates the task.
    """
    from consumer.publisher import HistoryPublisher, prepare_event  # noqa: PLC0415  # aio-pika

    given = {name: value for name, value in fields.items() if value is not None}
    if source is not None:
        if given or create_task or wait:
            raise click.UsageError("--file goes alone, without --task, --type, --content, ...")
        sent, refused = _publish_file(settings_from(ctx), source)
        if as_json:
            print_json({"sent": sent, "refused": refused})
        else:
            click.echo(f"sent {sent}, refused {refused}")
        if refused:
            ctx.exit(1)
        return
    missing = [f"--{flag}" for flag, name in _REQUIRED if name not in given]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give --file)")
    try:
        outgoing = prepare_event(given, now=datetime.now(UTC))
    except InvalidEventError as exc:
        raise click.UsageError(f"invalid event: {exc.detail}") from None
    settings = settings_from(ctx)
    if not (create_task or wait):

        async def run() -> UUID:
            async with HistoryPublisher(settings.amqp_url, exchange=settings.exchange) as sender:
                return await sender.publish(outgoing)

        event_id = run_async(run)
        if as_json:
            print_json({"id": str(event_id)})
        else:
            click.echo(event_id)
        return
    task_id: UUID = given["task_id"]
    run_async(
        lambda: _publish_and_wait(
            settings,
            outgoing,
            task_id=task_id,
            create_task=create_task,
            wait=wait,
            as_json=as_json,
        )
    )


async def _publish_and_wait(  # noqa: PLR0913  # the command's choices, each by name
    settings: Settings,
    outgoing: OutgoingEvent,
    *,
    task_id: UUID,
    create_task: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Publish one event, creating its task first and/or waiting until it is stored."""
    from consumer.cli.history import line_of  # noqa: PLC0415  # loads rich: at run time
    from consumer.publisher import HistoryPublisher  # noqa: PLC0415  # aio-pika
    from consumer.store import Store  # noqa: PLC0415  # asyncpg

    async with (
        Store(settings.database_url, max_connections=2) as store,
        HistoryPublisher(settings.amqp_url, exchange=settings.exchange) as publisher,
    ):
        if create_task:
            await store.create_task(task_id)
        elif (absent := await absence_of(store, task_id)) is not None:
            for line in unknown_task_hint(task_id, absent, settings)[:2]:
                click.echo(line, err=True)
        event_id = await publisher.publish(outgoing)
        if not as_json:
            click.echo(event_id)
        if not wait:
            if as_json:
                print_json({"id": str(event_id)})
            return
        try:
            entry = await asyncio.wait_for(_stored(store, task_id, event_id), WAIT_SECONDS)
        except TimeoutError:
            if as_json:  # the id is what a script needs to look again
                print_json({"id": str(event_id), "entry": None})
            raise await _not_stored(store, settings, task_id, event_id) from None
        if as_json:
            print_json({"id": str(event_id), "entry": entry.model_dump(mode="json")})
        else:
            click.echo(f"stored: {line_of(entry)}")


async def _not_stored(
    store: Store, settings: Settings, task_id: UUID, event_id: UUID
) -> TaskHistoryError:
    """Why an event published was not stored in time: its missing task, or no consumer."""
    if await absence_of(store, task_id) is not None:
        # Not the consumer's fault: the event waits for its task, as the hint said.
        return TaskHistoryError(
            f"event {event_id} was published but not stored within {WAIT_SECONDS} s:"
            f" task {task_id} still does not exist, so the consumer holds the event for"
            f" it up to {settings.unknown_task_retry_seconds:g} s"
            " (TASK_HISTORY_UNKNOWN_TASK_RETRY_SECONDS), then dead-letters it; create"
            " the task, or publish with --create-task"
        )
    return TaskHistoryError(
        f"event {event_id} was published but not stored within {WAIT_SECONDS} s: is"
        " `task-history consume` running, on this broker and this database?"
    )


async def _stored(store: Store, task_id: UUID, event_id: UUID) -> HistoryEntry:
    """The entry `event_id` once it is stored (at once if it already is)."""
    entries = store.follow(task_id, from_start=True)
    try:
        async for entry in entries:
            if entry.id == event_id:
                return entry
    finally:
        await entries.aclose()
    raise AssertionError("following a task never ends")  # pragma: no cover


_REQUIRED = (("task", "task_id"), ("type", "context_type"), ("content", "content"))


def _publish_file(settings: Settings, source: BinaryIO) -> tuple[int, int]:
    """Publish every good line of `source`; report each bad one; return (sent, refused)."""
    from consumer.publisher import HistoryPublisher, read_event_lines  # noqa: PLC0415  # aio-pika

    sent = refused = 0
    line_of: list[int] = []  # the line number of each event handed to the publisher

    def refuse(number: int, reason: object) -> None:
        nonlocal refused
        refused += 1
        click.echo(f"line {number}: {inert(str(reason))}", err=True)

    def events() -> Iterator[OutgoingEvent]:
        for number, item in read_event_lines(source):
            if isinstance(item, InvalidEventError):
                refuse(number, item)
            else:
                line_of.append(number)
                yield item

    async def run() -> None:
        nonlocal sent
        with counting("publishing", show=sys.stderr.isatty()) as count:
            async with HistoryPublisher(settings.amqp_url, exchange=settings.exchange) as publisher:
                async for index, error in publisher.publish_each(events()):
                    if error is None:
                        sent += 1
                    else:
                        refuse(line_of[index], error)
                    count(f"sent {sent}, refused {refused}")

    run_async(run)
    return sent, refused


@click.command(cls=Command)
@click.option("--typescript", is_flag=True, help="TypeScript types instead of the JSON Schema.")
def schema(*, typescript: bool) -> None:
    """Print the event's JSON Schema, or the TypeScript types of events and entries."""
    text = schema_module.typescript() if typescript else schema_module.event_json_schema_text()
    click.echo(text, nl=False)
