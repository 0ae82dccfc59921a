"""Producing events: publish them to the exchange, or print the schema they follow."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO
from uuid import UUID

import click

from consumer import schema as schema_module
from consumer.cli.context import run_async, settings_from
from consumer.cli.options import json_object_option
from consumer.cli.progress import counting
from consumer.entries import ContextType
from consumer.errors import InvalidEventError
from consumer.settings import Settings

if TYPE_CHECKING:
    from consumer.publisher import OutgoingEvent


@click.command()
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
@click.pass_context
def publish(
    ctx: click.Context,
    /,
    *,
    source: BinaryIO | None,
    **fields: Any,  # noqa: ANN401  # the flags
) -> None:
    """Publish events to the history exchange, validated and confirmed.

    One event from --task, --type and --content (and optionally --metadata, --workspace,
    --session): prints its id. Or many from --file: a bad line is reported on stderr as
    `line N: reason` and skipped, the rest are sent, and a last line says `sent N, refused M`;
    the exit status is 1 when any line was refused.
    """
    from consumer.publisher import HistoryPublisher, prepare_event  # noqa: PLC0415  # aio-pika

    given = {name: value for name, value in fields.items() if value is not None}
    if source is not None:
        if given:
            raise click.UsageError("--file goes alone, without --task, --type, --content, ...")
        sent, refused = _publish_file(settings_from(ctx), source)
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

    async def run() -> UUID:
        async with HistoryPublisher(settings.amqp_url, exchange=settings.exchange) as publisher:
            return await publisher.publish(outgoing)

    click.echo(run_async(run))


_REQUIRED = (("task", "task_id"), ("type", "context_type"), ("content", "content"))


def _publish_file(settings: Settings, source: BinaryIO) -> tuple[int, int]:
    """Publish every good line of `source`; report each bad one; return (sent, refused)."""
    from consumer.publisher import HistoryPublisher, read_event_lines  # noqa: PLC0415  # aio-pika

    sent = refused = 0
    line_of: list[int] = []  # the line number of each event handed to the publisher

    def refuse(number: int, reason: object) -> None:
        nonlocal refused
        refused += 1
        click.echo(f"line {number}: {reason}", err=True)

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


@click.command()
@click.option("--typescript", is_flag=True, help="TypeScript types instead of the JSON Schema.")
def schema(*, typescript: bool) -> None:
    """Print the event's JSON Schema, or the TypeScript types of events and entries."""
    text = schema_module.typescript() if typescript else schema_module.event_json_schema_text()
    click.echo(text, nl=False)
