"""The `dlq` group: list, show, replay, purge and export the rows of the dead-letter table."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

from consumer.cli.context import Group, run_async, settings_from
from consumer.cli.options import (
    dry_run_option,
    json_option,
    limit_option,
    non_negative_option,
    print_json,
    selection_options,
)
from consumer.cli.output import export_to, output_option, write_lines
from consumer.cli.progress import progress_bar
from consumer.cli.questions import can_ask, confirmed
from consumer.deadletters import Census, exported, refusal_to_replay, shown
from consumer.inert import inert, inert_json

if TYPE_CHECKING:
    from consumer.console import Action
    from consumer.deadletters import DeadLetter, Selection
    from consumer.replay import Outcome, Tally
    from consumer.store import Store

T = TypeVar("T")
TABLE = "task_build_history_dead_letters"


@click.group(cls=Group)
def dlq() -> None:
    """Count, show, replay, purge and export the dead letters; show who replayed and purged.

    Dead letters are rows of the table task_build_history_dead_letters: each message the
    consumer could not store, why it failed, and the message as it was received. Every command
    filters in the database, at any number of letters, and several may run at once: a replay
    deletes a row only once the broker has confirmed its copy, so a killed one loses nothing.
    See docs/operating.md, "Dead letters".
    """


def _on_store(ctx: click.Context, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` with a store open on the database the settings name."""
    from consumer.store import Store  # noqa: PLC0415  # loads asyncpg: at run time only

    settings = settings_from(ctx)

    async def run() -> T:
        async with Store(settings.database_url, max_connections=1) as store:
            return await work(store)

    return run_async(run)


@dlq.command(name="list")
@selection_options
@json_option
@non_negative_option(
    "--sample", default=5, most=10_000, description="How many of the newest to show."
)
@click.pass_context
def dlq_list(ctx: click.Context, *, selection: Selection, as_json: bool, sample: int) -> None:
    """Count the dead letters by error code and task, and show the newest few."""
    from consumer import replay  # noqa: PLC0415  # loads aio-pika: at run time only

    found = _on_store(ctx, lambda store: replay.census(store, selection, sample_size=sample))
    if as_json:
        print_json(found.to_json())
        return
    _print_census(found, selection)


def _print_census(found: Census, selection: Selection) -> None:
    # Plain lines rather than a table: ids stay whole on a terminal, in a pipe and in a log.
    # Codes, ids, routing keys and details come from messages: inert (consumer.inert).
    which = "" if selection.is_everything else f" ({selection.describe()})"
    click.echo(f"{found.total} dead letters{which} in {TABLE}")
    for group in found.groups:
        click.echo(f"\n{group.count:>9}  {inert(group.error)}")
        for task, count in group.tasks:
            click.echo(f"{count:>19}  task {inert(task or '-')}")
    if found.newest:
        click.echo(f"\nnewest {len(found.newest)}, newest first:")
    for letter in found.newest:
        failed_at = letter.failed_at.isoformat(timespec="seconds") if letter.failed_at else "-"
        click.echo(
            f"\n  #{letter.id}  {inert(letter.code)}  failed {failed_at}"
            f"  replayed {letter.replay_count}"
            f"\n    message {inert(letter.message_id or '-')}  task {inert(letter.task_id or '-')}"
            f"  routing key {inert(letter.routing_key or '-')}\n    {inert(letter.detail)}"
        )


@dlq.command(name="show")
@click.argument("key", metavar="ID")
@click.pass_context
def dlq_show(ctx: click.Context, key: str) -> None:
    """Print one dead letter whole, by row id (as `list` shows it) or by message id.

    Properties, headers and body, as indented JSON; of several letters with one message id,
    the newest.
    """
    from consumer import replay  # noqa: PLC0415  # loads aio-pika: at run time only

    letter = _on_store(ctx, lambda store: replay.find(store, key))
    click.echo(inert_json(json.dumps(shown(letter), indent=2, ensure_ascii=False)))


@dlq.command(name="replay")
@selection_options
@limit_option("letters to send")
@non_negative_option(
    "--max-replays",
    default=3,
    most=1_000_000,
    description="Leave (and report) a letter already replayed this many times.",
)
@dry_run_option
@json_option
@click.pass_context
def dlq_replay(  # noqa: PLR0913  # one parameter per flag
    ctx: click.Context,
    *,
    selection: Selection,
    limit: int | None,
    max_replays: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Send dead letters back to the exchange with their original routing key.

    Each is republished with its body, properties and message_id, x-replay-count plus one; its
    row is deleted once the broker has confirmed the copy. A letter whose body was over 1 MiB
    (only its start was kept) is never sent: it is listed and stays. Exit 1 if a letter's
    routing key reaches no queue (it stays).
    """
    from consumer import operations, replay  # noqa: PLC0415  # loads aio-pika: at run time only
    from consumer.broker.signing import HeaderSigner  # noqa: PLC0415  # with the replay
    from consumer.store import Store  # noqa: PLC0415  # loads asyncpg: at run time only

    settings = settings_from(ctx)

    async def run(progress: replay.Progress | None) -> Outcome:
        # Two connections: the next batch is claimed while this one is sent.
        async with Store(settings.database_url, max_connections=2) as store:
            republisher = None
            if not dry_run:
                signer = HeaderSigner(await store.header_key())
                republisher = await replay.Republisher.connect(
                    settings.amqp_url, settings.exchange, signer=signer
                )
            try:
                if republisher is None:
                    return await replay.replay(
                        store,
                        None,
                        selection=selection,
                        limit=limit,
                        max_replays=max_replays,
                        progress=progress,
                    )
                _, outcome = await operations.replay_recorded(
                    store,
                    republisher,
                    selection=selection,
                    operator=operations.command_user(),
                    limit=limit,
                    max_replays=max_replays,
                    progress=progress,
                )
                return outcome
            finally:
                if republisher is not None:
                    await republisher.close()

    with progress_bar("replaying") as progress:
        outcome = run_async(lambda: run(progress))
    if as_json:
        print_json(_outcome_json(outcome, dry_run=dry_run))
    else:
        _print_replayed(outcome, dry_run=dry_run, max_replays=max_replays)
    if outcome.unroutable.count:
        ctx.exit(1)


@dlq.command(name="purge")
@selection_options
@limit_option("letters to delete")
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter (no filter).")
@click.option("--yes", is_flag=True, help="Don't ask for confirmation.")
@dry_run_option
@json_option
@click.pass_context
def dlq_purge(  # noqa: PLR0913  # one parameter per flag
    ctx: click.Context,
    *,
    selection: Selection,
    limit: int | None,
    everything: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete dead letters for good: those the filters select, or --all.

    On a terminal it asks first, saying how many match; elsewhere it needs --yes.
    """
    from consumer import operations, replay  # noqa: PLC0415  # loads aio-pika: at run time only

    if selection.is_everything and not everything:
        raise click.UsageError("purge needs a filter (--error, --task, --since, --until) or --all")
    if everything and not selection.is_everything:
        raise click.UsageError("--all deletes every dead letter: give it no filter")
    if not (yes or dry_run or can_ask()):
        raise click.UsageError(
            "purge deletes dead letters: confirm with --yes (no terminal to ask)"
        )
    through = None
    if not (yes or dry_run):
        extent = _on_store(ctx, lambda store: store.dead_letter_extent(selection))
        matching = extent.count if limit is None else min(limit, extent.count)
        # Asked here, outside the event loop: one Ctrl-C is an answer, not a stuck thread.
        if matching and not confirmed(f"Delete {matching} dead letters ({selection.describe()})?"):
            click.echo("purge cancelled: nothing deleted", err=True)
            ctx.exit(1)
        through = extent.last  # what was counted, not what arrives meanwhile

    async def run(store: Store, progress: replay.Progress | None) -> Outcome:
        if dry_run:
            return await replay.purge(
                store, selection=selection, limit=limit, dry_run=True, progress=progress
            )
        _, outcome = await operations.purge_recorded(
            store,
            selection=selection,
            operator=operations.command_user(),
            limit=limit,
            through=through,
            progress=progress,
        )
        return outcome

    with progress_bar("purging") as progress:
        outcome = _on_store(ctx, lambda store: run(store, progress))
    if as_json:
        print_json(_outcome_json(outcome, dry_run=dry_run, purge=True))
        return
    if dry_run:
        _print_sample("would delete", outcome.done)
    verb = "dry run: would delete" if dry_run else "deleted"
    click.echo(f"{verb} {outcome.done.count}; {outcome.left} dead letters left")


@dlq.command(name="export")
@selection_options
@limit_option("letters")
@output_option
@click.pass_context
def dlq_export(ctx: click.Context, *, selection: Selection, limit: int | None, output: str) -> None:
    """Write dead letters as JSON Lines, oldest first, streamed from the database.

    One object per letter: id, message_id, error, detail, routing_key, task_id, failed_at,
    replay_count, the body (`body` when it is UTF-8, else `body_base64`), properties, headers.
    """
    from consumer import replay  # noqa: PLC0415  # loads aio-pika: at run time only

    def write(sink: TextIO) -> int:
        async def lines_of(store: Store) -> int:
            letters = replay.export(store, selection, limit=limit)
            lines = (json.dumps(exported(letter), ensure_ascii=False) async for letter in letters)
            return await write_lines(lines, sink, noun="dead letters", output=output)

        return _on_store(ctx, lines_of)

    export_to(output, write, noun="dead letters")


@dlq.command(name="actions")
@json_option
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    metavar="N",
    help="How many of the newest to show.",
)
@click.option(
    "--before",
    type=click.IntRange(1, 2**63 - 1),
    metavar="ID",
    help="Only those recorded before this one (the `next` of the previous page).",
)
@click.pass_context
def dlq_actions(ctx: click.Context, *, as_json: bool, limit: int, before: int | None) -> None:
    """Show the record of replays and purges, newest first.

    Every replay and purge, by this command or over HTTP by `task-history serve`, is recorded
    when it starts: who (an operating-system user, or an operator token's name), the filter,
    how many letters it chose, how many it moved or deleted (counted as each batch commits),
    and how it ended.
    """
    page = _on_store(ctx, lambda store: store.actions(before=before, limit=limit))
    if as_json:
        document = {
            "actions": [action.to_json() for action in page.actions],
            "next": page.next,
        }
        print_json(document)
        return
    if not page.actions:
        click.echo("no replay or purge recorded" + (f" before #{before}" if before else ""))
        return
    for action in page.actions:
        _print_action(action)
    if page.next is not None:
        click.echo(f"\nolder ones: task-history dlq actions --before {page.next}")


def _print_action(action: Action) -> None:
    """Two lines: what, when, how it ended and by whom; then the filter and the counts."""
    started = action.started_at.isoformat(timespec="seconds")
    ended = (
        f" to {action.finished_at.isoformat(timespec='seconds')}"
        if action.finished_at is not None
        else ""
    )
    verb = "moved" if action.action == "replay" else "deleted"
    filters = ", ".join(
        f"{name} {json.dumps(value, ensure_ascii=False)}" for name, value in action.filter.items()
    )
    click.echo(
        f"#{action.id}  {action.action}  {action.state}  {started}{ended}"
        f"  by {inert(action.actor)} ({action.via}, database role {inert(action.database_role)})"
    )
    counts = f"chose {action.selected}, {verb} {action.affected}"
    if action.skipped:
        counts += f", left {action.skipped}"
    click.echo(f"    {inert(filters or 'every dead letter')}; {counts}")
    if action.detail:
        click.echo(f"    {inert(action.detail)}")


def _print_replayed(outcome: Outcome, *, dry_run: bool, max_replays: int) -> None:
    """What a replay did (or would do), each letter it left with why, then the counts."""
    if dry_run:
        _print_sample("would replay", outcome.done)
    for letter in outcome.at_max_replays.sample:
        click.echo(
            f"left #{letter.id}: replayed {letter.replay_count} times already"
            f" (--max-replays {max_replays})"
        )
    _more(outcome.at_max_replays, "at --max-replays")
    for letter in outcome.not_whole.sample:
        click.echo(f"left #{letter.id}: {refusal_to_replay(letter)}")
    _more(outcome.not_whole, "kept only in part")
    for letter, reason in outcome.unroutable.sample:
        click.echo(f"left #{letter.id}: {inert(reason)}")
    _more(outcome.unroutable, "unroutable")
    partial = f", {outcome.not_whole.count} kept only in part" if outcome.not_whole.count else ""
    click.echo(
        f"{'dry run: would move' if dry_run else 'moved'} {outcome.done.count}, skipped"
        f" {outcome.at_max_replays.count} at --max-replays{partial}, unroutable"
        f" {outcome.unroutable.count}; {outcome.left} dead letters left"
    )


def _outcome_json(outcome: Outcome, *, dry_run: bool, purge: bool = False) -> dict[str, object]:
    """What a replay or purge did, as `--json` prints it: the API's fields for the same."""
    from consumer.operations import left_behind  # noqa: PLC0415  # loads aio-pika: run time

    return {
        "dry_run": dry_run,
        "count": outcome.done.count,
        # A purge deletes whatever it chose: it leaves nothing behind, as the API says.
        "left_behind": {} if purge else left_behind(outcome),
        "left": outcome.left,
    }


def _print_sample(verb: str, tally: Tally[DeadLetter]) -> None:
    for letter in tally.sample:
        click.echo(f"{verb} {_line(letter)}")
    _more(tally, "")


def _more(tally: Tally[Any], what: str) -> None:
    """A line for what a sample leaves out, if anything."""
    if tally.count > len(tally.sample):
        rest = tally.count - len(tally.sample)
        click.echo(f"... and {rest} more{' ' + what if what else ''} (`dlq export` lists them all)")


def _line(letter: DeadLetter) -> str:
    """One dead letter on one line."""
    return inert(
        f"#{letter.id} {letter.message_id or '-'} task {letter.task_id or '-'} {letter.code}"
        f" {letter.routing_key}: {letter.detail}"
    )
