"""The `dlq` group: list, show, replay and purge the messages in the dead-letter queue."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from consumer.cli.context import run_async, settings_from
from consumer.cli.options import non_negative_option, selection_options
from consumer.cli.progress import progress_bar
from consumer.deadletters import shown

if TYPE_CHECKING:
    from consumer.deadletters import DeadLetter, Selection


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered messages (see README: Operating the dead letters).

    Each command takes the messages in the dead-letter queue in order and gives back every one
    it doesn't move or delete, in its order; killed at any moment, it loses nothing. One dlq
    command at a time: a second one waits for nothing and says the queue is busy.
    """


@dlq.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@non_negative_option("--sample", default=5, description="How many of the newest to show.")
@click.pass_context
def dlq_list(ctx: click.Context, *, as_json: bool, sample: int) -> None:
    """Count the dead letters by error code and task, and show the newest few."""
    from consumer import replay  # noqa: PLC0415  # loads aio-pika: at run time only

    settings = settings_from(ctx)
    topology = settings.topology
    with progress_bar("reading") as progress:
        found = run_async(
            lambda: replay.census(
                settings.amqp_url, topology=topology, sample_size=sample, progress=progress
            )
        )
    if as_json:
        click.echo(json.dumps({"queue": topology.dead_letter_queue, **found.to_json()}))
        return
    # Plain lines rather than a table: ids stay whole on a terminal, in a pipe and in a log.
    click.echo(f"{topology.dead_letter_queue}: {found.total} dead letters")
    for group in found.groups():
        click.echo(f"\n{group['count']:>8}  {group['error']}")
        for task in group["tasks"]:
            click.echo(f"{task['count']:>18}  task {task['task_id']}")
    if found.newest:
        click.echo(f"\nnewest {len(found.newest)}, newest first:")
    for letter in reversed(found.newest):
        failed_at = letter.failed_at.isoformat(timespec="seconds") if letter.failed_at else "-"
        click.echo(
            f"\n  {letter.message_id or '-'}  {letter.code}  failed {failed_at}"
            f"  replayed {letter.replay_count}\n"
            f"    task {letter.task_id or '-'}  routing key {letter.routing_key or '-'}\n"
            f"    {letter.detail}"
        )


@dlq.command(name="show")
@click.argument("message_id")
@click.pass_context
def dlq_show(ctx: click.Context, message_id: str) -> None:
    """Print one dead letter whole: properties, headers and body, as indented JSON."""
    from consumer import replay  # noqa: PLC0415  # loads aio-pika: at run time only

    settings = settings_from(ctx)
    letter = run_async(
        lambda: replay.find(settings.amqp_url, topology=settings.topology, message_id=message_id)
    )
    click.echo(json.dumps(shown(letter), indent=2, ensure_ascii=False))


@dlq.command(name="replay")
@selection_options
@non_negative_option(
    "--max-replays",
    default=3,
    description="Leave (and report) a message already replayed this many times.",
)
@click.pass_context
def dlq_replay(
    ctx: click.Context,
    *,
    selection: Selection,
    limit: int | None,
    dry_run: bool,
    max_replays: int,
) -> None:
    """Send dead letters back to the exchange with their original routing key.

    Each is republished with its properties and message_id, x-replay-count plus one, and
    acked only once the broker has confirmed the copy.
    """
    from consumer import replay  # noqa: PLC0415  # loads aio-pika: at run time only

    settings = settings_from(ctx)
    with progress_bar("replaying") as progress:
        outcome = run_async(
            lambda: replay.replay(
                settings.amqp_url,
                topology=settings.topology,
                selection=selection,
                limit=limit,
                max_replays=max_replays,
                dry_run=dry_run,
                progress=progress,
            )
        )
    if dry_run:
        for letter in outcome.done:
            click.echo(f"would replay {_line(letter)}")
    for letter in outcome.at_max_replays:
        click.echo(
            f"left {letter.message_id or '-'}: replayed {letter.replay_count} times already"
            f" (--max-replays {max_replays})"
        )
    for letter, reason in outcome.unroutable:
        click.echo(f"left {letter.message_id or '-'}: {reason}")
    verb = "would move" if dry_run else "moved"
    click.echo(
        f"{'dry run: ' if dry_run else ''}{verb} {len(outcome.done)}, skipped"
        f" {len(outcome.at_max_replays)} at --max-replays, unroutable"
        f" {len(outcome.unroutable)}, left {outcome.left} in {outcome.queue}"
    )
    if outcome.unroutable:
        ctx.exit(1)


@dlq.command(name="purge")
@selection_options
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter (no filter).")
@click.option("--yes", is_flag=True, help="Don't ask for confirmation.")
@click.pass_context
def dlq_purge(  # noqa: PLR0913  # one parameter per flag
    ctx: click.Context,
    *,
    selection: Selection,
    limit: int | None,
    dry_run: bool,
    everything: bool,
    yes: bool,
) -> None:
    """Delete dead letters for good: those the filters select, or --all."""
    from consumer import replay  # noqa: PLC0415  # loads aio-pika: at run time only

    if selection.is_everything and not everything:
        raise click.UsageError(
            "purge needs a filter (--error, --task, --older-than, --newer-than) or --all"
        )
    if everything and not selection.is_everything:
        raise click.UsageError("--all deletes every dead letter: give it no filter")
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not (yes or dry_run or interactive):
        raise click.UsageError("purge deletes messages: confirm with --yes (no terminal to ask)")
    settings = settings_from(ctx)
    topology = settings.topology

    def confirm(size: int) -> bool:
        return click.confirm(
            f"Delete {selection.describe()} from {topology.dead_letter_queue}"
            f" ({size} messages in it)?",
            err=True,
        )

    with progress_bar("purging") as progress:
        outcome = run_async(
            lambda: replay.purge(
                settings.amqp_url,
                topology=topology,
                selection=selection,
                limit=limit,
                dry_run=dry_run,
                confirm=None if yes or dry_run else confirm,
                progress=progress,
            )
        )
    if outcome.cancelled:
        click.echo("purge cancelled: nothing deleted", err=True)
        ctx.exit(1)
    if dry_run:
        for letter in outcome.done:
            click.echo(f"would delete {_line(letter)}")
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{'dry run: ' if dry_run else ''}{verb} {len(outcome.done)}, left {outcome.left}"
        f" in {outcome.queue}"
    )


def _line(letter: DeadLetter) -> str:
    """One dead letter on one line."""
    return (
        f"{letter.message_id or '-'} task {letter.task_id or '-'} {letter.code}"
        f" {letter.routing_key}: {letter.detail}"
    )
