"""Reading the history: show a page of it, export it whole, or tail a task's new entries."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO
from uuid import UUID

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from consumer.cli.context import Command, run_async, settings_from
from consumer.cli.hints import Absence, absence_of, unknown_task_hint
from consumer.cli.options import MOST, cursor_option, filter_options, history_query
from consumer.cli.output import export_to, output_option, write_lines
from consumer.entries import HistoryEntry
from consumer.inert import inert, inert_json
from consumer.pages import Cursor, HistoryQuery, Page
from consumer.signals import run_until_stopped

if TYPE_CHECKING:
    from consumer.settings import Settings


def _filtered(query: HistoryQuery) -> bool:
    """Whether a read narrows the history with filters (type, time, a page cursor)."""
    return bool(query.context_types or query.since or query.until or query.after)


@click.command(cls=Command)
@click.argument("task_id", type=click.UUID, required=False)
@click.option("--workspace", "workspace_id", type=click.UUID, help="Entries of this workspace.")
@click.option("--session", "session_id", type=click.UUID, help="Entries of this session.")
@click.option("--json", "as_json", is_flag=True, help="JSON, one object per line.")
@click.option("--array", is_flag=True, help="With --json: one JSON array instead of lines.")
@click.option(
    "--limit",
    type=click.IntRange(1, MOST),
    metavar="N",
    help="At most this many entries (a page).",
)
@click.option(
    "--after",
    metavar="CURSOR",
    callback=cursor_option,
    help="The page after the one that printed this cursor.",
)
@filter_options
@click.pass_context
def show(  # noqa: PLR0913  # one parameter per flag
    ctx: click.Context,
    /,
    task_id: UUID | None,
    *,
    workspace_id: UUID | None,
    session_id: UUID | None,
    as_json: bool,
    array: bool,
    limit: int | None,
    after: Cursor | None,
    **filters: Any,  # noqa: ANN401  # the shared filter flags, checked by history_query
) -> None:
    """Print a task's history (or a workspace's, or a session's), oldest first.

    With --limit, when more entries follow, the last line (on stderr with --json) gives the
    cursor of the next page: pass it back with --after.
    """
    from consumer.store import Store  # noqa: PLC0415  # loads asyncpg: at run time only

    if array and not as_json:
        raise click.UsageError("--array goes with --json")
    if task_id is None and workspace_id is None and session_id is None:
        raise click.UsageError("give a TASK_ID, --workspace or --session")
    query = history_query(
        task_id=task_id,
        workspace_id=workspace_id,
        session_id=session_id,
        limit=limit,
        after=after,
        **filters,
    )
    settings = settings_from(ctx)

    async def run() -> tuple[Page, Absence | None]:
        async with Store(settings.database_url, max_connections=1) as store:
            page = await store.find_page(query)
            absent = None
            if not page.entries and task_id is not None:
                absent = await absence_of(store, task_id)
            return page, absent

    page, absent = run_async(run)
    if as_json:
        _print_json(page.entries, array=array)
    elif page.entries:
        _print_table(_subject(query), page.entries, newest_first=query.newest_first)
    if not page.entries:
        _print_nothing(query, absent, settings, err=as_json)
    if page.next is not None:
        click.echo(f"next page: --after {page.next.encode()}", err=as_json)


def _print_nothing(
    query: HistoryQuery, absent: Absence | None, settings: Settings, *, err: bool
) -> None:
    """Why a read found nothing: the task doesn't exist, the filters match nothing, or none."""
    if absent is not None and query.task_id is not None:
        for line in unknown_task_hint(query.task_id, absent, settings):
            click.echo(line, err=err)
    elif not err:  # --json: nothing is an empty output, not a sentence
        click.echo(
            "no entries match these filters"
            if _filtered(query)
            else f"{_subject(query)} has no history"
        )


def _print_json(entries: Sequence[HistoryEntry], *, array: bool) -> None:
    lines = [inert_json(entry.model_dump_json()) for entry in entries]
    if array:
        click.echo("[" + ",\n".join(lines) + "]")
    else:
        for line in lines:
            click.echo(line)


def _subject(query: HistoryQuery) -> str:
    """What a read is about, for a heading: "task X", "workspace Y, session Z"."""
    parts = [
        f"{name} {value}"
        for name, value in (
            ("task", query.task_id),
            ("workspace", query.workspace_id),
            ("session", query.session_id),
        )
        if value is not None
    ]
    return ", ".join(parts)


def _print_table(subject: str, entries: Sequence[HistoryEntry], *, newest_first: bool) -> None:
    """A table on a terminal; piped or redirected, one plain line per entry, for grep and cut."""
    order = "newest first" if newest_first else "oldest first"
    count = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
    heading = inert(f"{subject}: {count}, {order}")
    if not sys.stdout.isatty():
        click.echo(heading)
        for entry in entries:
            click.echo(line_of(entry))
        return
    console = Console(soft_wrap=False)
    # Text, never markup: `[link=...]` or `[/bold]` in data is shown as it is.
    console.print(Text(heading))
    table = Table()
    table.add_column("created at (UTC)", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("content", overflow="fold")
    for entry in entries:
        table.add_row(
            Text(_created(entry)),
            Text(entry.context_type.value),
            Text(inert(entry.content, multiline=True)),
        )
    console.print(table)


@click.command(cls=Command)
@click.argument("task_id", type=click.UUID, required=False)
@click.option("--task", "task_alias", type=click.UUID, help="The same as TASK_ID.")
@click.option("--workspace", "workspace_id", type=click.UUID, help="Entries of this workspace.")
@click.option("--session", "session_id", type=click.UUID, help="Entries of this session.")
@click.option(
    "--limit", type=click.IntRange(1, MOST), metavar="N", help="At most this many entries."
)
@filter_options
@output_option
@click.pass_context
def export(
    ctx: click.Context,
    /,
    task_id: UUID | None,
    *,
    task_alias: UUID | None,
    output: str,
    **selection: Any,  # noqa: ANN401  # flags
) -> None:
    """Write entries as JSON Lines, each with the nine fields of an entry, oldest first.

    One task's entries with TASK_ID (or a workspace's, a session's), else every entry; streamed
    from the database, however many there are.
    """
    from consumer.store import Store  # noqa: PLC0415  # loads asyncpg: at run time only

    if task_id is not None and task_alias is not None and task_id != task_alias:
        raise click.UsageError("TASK_ID and --task name two tasks: give one")
    query = history_query(task_id=task_id or task_alias, **selection)
    settings = settings_from(ctx)

    def write(sink: TextIO) -> int:
        async def run() -> int:
            async with Store(settings.database_url, max_connections=1) as store:
                entries = store.stream(query)
                try:
                    lines = (entry.model_dump_json() async for entry in entries)
                    return await write_lines(lines, sink, noun="entries", output=output)
                finally:
                    await entries.aclose()

        return run_async(run)

    export_to(output, write, noun="entries")


@click.command(cls=Command)
@click.argument("task_id", type=click.UUID)
@click.option("--from-start", is_flag=True, help="Print the task's current history first.")
@click.option("--json", "as_json", is_flag=True, help="JSON, one object per line.")
@click.pass_context
def tail(ctx: click.Context, task_id: UUID, *, from_start: bool, as_json: bool) -> None:
    """Print a task's new entries as they are stored, until SIGINT or SIGTERM (exit 0).

    Woken by PostgreSQL notifications (LISTEN/NOTIFY), not by polling.
    """
    from consumer.store import Store  # noqa: PLC0415  # loads asyncpg: at run time only

    settings = settings_from(ctx)

    waiting = _Waiting(f"waiting for entries of task {task_id} (Ctrl-C to stop)")

    async def run() -> None:
        async with Store(settings.database_url, max_connections=2) as store:
            await store.check_notifications()  # before saying it waits: nothing would wake it
            absent = await absence_of(store, task_id)
            if absent is not None:
                click.echo(unknown_task_hint(task_id, absent, settings)[0], err=True)
            waiting.start()
            entries = store.follow(task_id, from_start=from_start)
            try:
                async for entry in entries:
                    waiting.end()
                    click.echo(inert_json(entry.model_dump_json()) if as_json else line_of(entry))
            finally:
                await entries.aclose()

    # A signal at any moment, the waiting line shown or not, ends it: exit 0.
    run_until_stopped(run)


class _Waiting:
    """A line on stderr while nothing has arrived; on a terminal it goes when something does."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._shown = False

    def start(self) -> None:
        """Show the line."""
        if sys.stderr.isatty():
            click.echo(self._text, err=True, nl=False)
            self._shown = True
        else:  # a log or a pipe: a line of its own, kept
            click.echo(self._text, err=True)

    def end(self) -> None:
        """Erase the line, if it is on a terminal and still there."""
        if self._shown:
            click.echo("\r\x1b[K", err=True, nl=False)
            self._shown = False


def _created(entry: HistoryEntry) -> str:
    """When an entry was created, to the millisecond."""
    return entry.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def line_of(entry: HistoryEntry) -> str:
    """One entry on one line: time, type, content, controls shown escaped (consumer.inert)."""
    return f"{_created(entry)}  {entry.context_type.value:<14}  {inert(entry.content)}"
