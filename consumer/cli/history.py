"""Reading the history: show a page of it, export it whole, or tail a task's new entries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TextIO
from uuid import UUID

import click
from rich.console import Console
from rich.table import Table

from consumer.cli.context import run_async, settings_from
from consumer.cli.options import cursor_option, filter_options, history_query
from consumer.cli.output import export_to, output_option, write_lines
from consumer.entries import HistoryEntry
from consumer.pages import Cursor, HistoryQuery, Page
from consumer.signals import stop_on_signals


@click.command()
@click.argument("task_id", type=click.UUID, required=False)
@click.option("--workspace", "workspace_id", type=click.UUID, help="Entries of this workspace.")
@click.option("--session", "session_id", type=click.UUID, help="Entries of this session.")
@click.option("--json", "as_json", is_flag=True, help="JSON, one object per line.")
@click.option("--array", is_flag=True, help="With --json: one JSON array instead of lines.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries (a page).")
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

    async def run() -> Page:
        async with Store(settings.database_url, max_connections=1) as store:
            return await store.find_page(query)

    page = run_async(run)
    if as_json:
        _print_json(page.entries, array=array)
    else:
        _print_table(_subject(query), page.entries, newest_first=query.newest_first)
    if page.next is not None:
        click.echo(f"next page: --after {page.next.encode()}", err=as_json)


def _print_json(entries: Sequence[HistoryEntry], *, array: bool) -> None:
    lines = [entry.model_dump_json() for entry in entries]
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
    console = Console(soft_wrap=False)
    if not entries:
        console.print(f"{subject} has no history", highlight=False)
        return
    order = "newest first" if newest_first else "oldest first"
    console.print(f"{subject}: {len(entries)} entries, {order}", highlight=False)
    table = Table()
    table.add_column("created at (UTC)", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("content", overflow="fold")
    for entry in entries:
        table.add_row(_created(entry), entry.context_type.value, entry.content)
    console.print(table)


@click.command()
@click.option("--task", "task_id", type=click.UUID, help="One task's entries (default: all).")
@click.option("--workspace", "workspace_id", type=click.UUID, help="Entries of this workspace.")
@click.option("--session", "session_id", type=click.UUID, help="Entries of this session.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
@filter_options
@output_option
@click.pass_context
def export(ctx: click.Context, /, *, output: str, **selection: Any) -> None:  # noqa: ANN401  # flags
    """Write entries as JSON Lines, the nine fields of each, streamed from the database."""
    from consumer.store import Store  # noqa: PLC0415  # loads asyncpg: at run time only

    query = history_query(**selection)
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


@click.command()
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

    async def follow(store: Store) -> None:
        entries = store.follow(task_id, from_start=from_start)
        try:
            async for entry in entries:
                click.echo(entry.model_dump_json() if as_json else _line_of(entry))
        finally:
            await entries.aclose()

    async def run() -> None:
        async with Store(settings.database_url, max_connections=1) as store:
            following = asyncio.create_task(follow(store))
            with stop_on_signals(lambda: _cancel(following)):
                await asyncio.wait([following])
            if not following.cancelled():
                following.result()  # raises what ended it, if not a signal

    run_async(run)


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


def _created(entry: HistoryEntry) -> str:
    """When an entry was created, to the millisecond."""
    return entry.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _line_of(entry: HistoryEntry) -> str:
    """One entry on one line: time, type, content (a line break in it shown as a backslash-n)."""
    content = entry.content.replace("\\", "\\\\").replace("\n", "\\n")
    return f"{_created(entry)}  {entry.context_type.value:<14}  {content}"
