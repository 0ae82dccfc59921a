"""The `task-history` command line: exit 0 on success, 1 on a failure, 2 on a usage error."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar
from uuid import UUID

import click
import rich.progress
import structlog
from rich.console import Console
from rich.table import Table

from consumer import replay
from consumer import schedule as expiry_schedule
from consumer import schema as schema_module
from consumer.broker import Broker
from consumer.deadletters import DeadLetter, Selection, shown
from consumer.demo import run_demo
from consumer.entries import ContextType, HistoryEntry
from consumer.errors import (
    ConfigurationError,
    InvalidCursorError,
    InvalidEventError,
    TaskHistoryError,
)
from consumer.logs import configure_logging
from consumer.moments import parse_moment
from consumer.pages import Cursor, HistoryQuery, Page
from consumer.publisher import HistoryPublisher, OutgoingEvent, prepare_event, read_event_lines
from consumer.redaction import redact, url_secrets
from consumer.replay import Progress
from consumer.settings import Settings, load_settings
from consumer.signals import stop_on_signals
from consumer.store import Store
from consumer.worker import consume as run_consumer

PROG = "task-history"
T = TypeVar("T")


def _settings(ctx: click.Context, **overrides: object) -> Settings:
    """Settings with the global flags (and a command's `overrides`) applied; logging set up."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        settings = load_settings(**root.params, **overrides)
        configure_logging(
            log_format=settings.log_format,
            level=settings.log_level,
            secrets=url_secrets(settings.database_url, settings.amqp_url),
        )
        root.obj = settings
    return root.obj


def _run(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coroutine())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", metavar="URL", help="PostgreSQL URL [TASK_HISTORY_DATABASE_URL]")
@click.option("--amqp-url", metavar="URL", help="RabbitMQ URL [TASK_HISTORY_AMQP_URL]")
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    help="Log style [TASK_HISTORY_LOG_FORMAT; default: console on a terminal, else json]",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Least severe level logged [TASK_HISTORY_LOG_LEVEL; default: info]",
)
@click.version_option(package_name="task-build-history", prog_name=PROG)
def cli(**_flags: str | None) -> None:
    """Keep the build history of tasks run by AI coding agents.

    Settings come from TASK_HISTORY_* environment variables and a .env file in the working
    directory; the flags above override them.
    """


@cli.command()
@click.option("--skip-broker", is_flag=True, help="Migrate the database only; declare nothing.")
@click.pass_context
def migrate(ctx: click.Context, *, skip_broker: bool) -> None:
    """Apply the pending SQL migrations and declare the AMQP topology (both idempotent)."""
    settings = _settings(ctx)

    async def run() -> list[str]:
        async with Store(settings.database_url, max_connections=1) as store:
            return await store.migrate()

    applied = _run(run)
    for name in applied:
        click.echo(f"applied {name}")
    if not applied:
        click.echo("database is up to date")
    structlog.get_logger().info("migrated", applied=applied)
    if not skip_broker:

        async def declare() -> None:
            async with Broker(settings.amqp_url, topology=settings.topology) as broker:
                await broker.declare()

        _run(declare)
        click.echo(f"declared exchange {settings.exchange} and queue {settings.queue}")


@cli.command()
@click.option("--batch-size", type=click.IntRange(1, 10_000), help="[TASK_HISTORY_BATCH_SIZE]")
@click.option(
    "--batch-wait-ms", type=click.IntRange(0, 60_000), help="[TASK_HISTORY_BATCH_WAIT_MS]"
)
@click.option("--prefetch", type=click.IntRange(1, 65_535), help="[TASK_HISTORY_PREFETCH]")
@click.pass_context
def consume(ctx: click.Context, /, **options: int | None) -> None:
    """Move events from RabbitMQ to PostgreSQL until SIGTERM or SIGINT."""
    settings = _settings(ctx, **options)
    _run(lambda: run_consumer(settings))


@cli.command()
@click.pass_context
def expire(ctx: click.Context) -> None:
    """Delete expired entries now and print how many went."""
    settings = _settings(ctx)

    async def run() -> int:
        async with Store(settings.database_url, max_connections=1) as store:
            return await store.expire(batch_size=settings.expire_batch_size)

    click.echo(_run(run))


@cli.command()
@click.option(
    "--cron",
    "schedule",
    default=expiry_schedule.DEFAULT_SCHEDULE,
    show_default=True,
    metavar="SCHEDULE",
    help="When pg_cron runs expiry, in cron syntax, GMT.",
)
@click.option("--unschedule", is_flag=True, help="Remove the job; the consumers expire again.")
@click.pass_context
def schedule(ctx: click.Context, *, schedule: str, unschedule: bool) -> None:
    """Let pg_cron run expiry in the database; the consumers' expiry loops then stand down."""
    if not expiry_schedule.is_schedule(schedule):
        raise click.BadParameter(
            "five cron fields (like '*/5 * * * *') or @hourly, @daily …", param_hint="--cron"
        )
    settings = _settings(ctx)
    if unschedule:
        gone = _run(lambda: expiry_schedule.unschedule_expiry(settings.database_url))
        if gone is None:
            click.echo("no pg_cron expiry job was registered")
        else:
            click.echo(f"removed pg_cron job {gone.name}; the consumers expire entries again")
        return
    job = _run(
        lambda: expiry_schedule.schedule_expiry(
            settings.database_url, schedule=schedule, batch_size=settings.expire_batch_size
        )
    )
    click.echo(
        f"pg_cron job {job.name} (in database {job.cron_database}) expires entries of"
        f" {job.database} at '{job.schedule}' (GMT); the consumers' expiry loops stand down"
    )


@cli.command()
@click.option("--ready", is_flag=True, help="Ask /readyz (consuming) instead of /healthz (alive).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the consumer runs.")
@click.pass_context
def health(ctx: click.Context, *, ready: bool, host: str) -> None:
    """Ask a running consumer whether it is alive (or ready); exit 1 if not. For health checks."""
    settings = _settings(ctx)
    if not settings.metrics_port:
        raise click.UsageError("TASK_HISTORY_METRICS_PORT is 0: the consumer serves no health")
    path = "/readyz" if ready else "/healthz"
    url = f"http://{host}:{settings.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            click.echo(response.read().decode(errors="replace").strip())
    except urllib.error.HTTPError as exc:
        raise TaskHistoryError(
            f"{path}: {exc.code} {exc.read().decode(errors='replace').strip()}"
        ) from None
    except OSError as exc:
        raise TaskHistoryError(f"{url} does not answer: {exc}") from None


@cli.command()
@click.option("--agents", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(0.01, 1000),
    default=2.0,
    show_default=True,
    help="Events per second per agent, on average.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.pass_context
def demo(ctx: click.Context, *, agents: int, rate: float, count: int | None) -> None:
    """Publish a realistic stream from simulated agents until SIGTERM/SIGINT (or --count)."""
    settings = _settings(ctx)

    async def run() -> int:
        stop = asyncio.Event()
        with stop_on_signals(stop.set):
            return await run_demo(settings, agents=agents, rate=rate, count=count, stop=stop)

    click.echo(f"published {_run(run)} events")


# Reads: the flags show, export and tail share, turned into a HistoryQuery.


def _cursor_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> Cursor | None:
    if value is None:
        return None
    try:
        return Cursor.decode(value)
    except InvalidCursorError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _moment_option(
    _ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_moment(value, now=datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _filter_options(command: Callable[..., None]) -> Callable[..., None]:
    """The filters every read takes: context types, a time range, the order."""
    for option in reversed(
        (
            click.option(
                "--type",
                "context_types",
                multiple=True,
                type=click.Choice([context_type.value for context_type in ContextType]),
                help="Only entries of this context type (repeat for several).",
            ),
            click.option(
                "--since",
                metavar="TIME",
                callback=_moment_option,
                help="Only entries created at or after TIME (RFC 3339, or an age: 2h, 3d).",
            ),
            click.option(
                "--until",
                metavar="TIME",
                callback=_moment_option,
                help="Only entries created before TIME (RFC 3339, or an age: 2h, 3d).",
            ),
            click.option("--newest-first", is_flag=True, help="Newest entries first."),
        )
    ):
        command = option(command)
    return command


def _query(
    *,
    context_types: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    newest_first: bool,
    **selection: Any,  # noqa: ANN401  # task, workspace, session, limit, after
) -> HistoryQuery:
    """The read the flags ask for; a usage error for flags that contradict each other."""
    if since is not None and until is not None and since >= until:
        raise click.UsageError("--since must be earlier than --until")
    try:
        return HistoryQuery(
            context_types=tuple(ContextType(value) for value in context_types),
            since=since,
            until=until,
            newest_first=newest_first,
            **selection,
        )
    except InvalidCursorError as exc:
        raise click.BadParameter(str(exc), param_hint="'--after'") from None


@cli.command()
@click.argument("task_id", type=click.UUID, required=False)
@click.option("--workspace", "workspace_id", type=click.UUID, help="Entries of this workspace.")
@click.option("--session", "session_id", type=click.UUID, help="Entries of this session.")
@click.option("--json", "as_json", is_flag=True, help="JSON, one object per line.")
@click.option("--array", is_flag=True, help="With --json: one JSON array instead of lines.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries (a page).")
@click.option(
    "--after",
    metavar="CURSOR",
    callback=_cursor_option,
    help="The page after the one that printed this cursor.",
)
@_filter_options
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
    **filters: Any,  # noqa: ANN401  # the shared filter flags, checked by _query
) -> None:
    """Print a task's history (or a workspace's, or a session's), oldest first.

    With --limit, when more entries follow, the last line (on stderr with --json) gives the
    cursor of the next page: pass it back with --after.
    """
    if array and not as_json:
        raise click.UsageError("--array goes with --json")
    if task_id is None and workspace_id is None and session_id is None:
        raise click.UsageError("give a TASK_ID, --workspace or --session")
    query = _query(
        task_id=task_id,
        workspace_id=workspace_id,
        session_id=session_id,
        limit=limit,
        after=after,
        **filters,
    )
    settings = _settings(ctx)

    async def run() -> Page:
        async with Store(settings.database_url, max_connections=1) as store:
            return await store.find_page(query)

    page = _run(run)
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
        table.add_row(
            entry.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            entry.context_type.value,
            entry.content,
        )
    console.print(table)


@cli.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered messages (see README: Operating the dead letters).

    Each command takes the messages in the dead-letter queue in order and gives back every one
    it doesn't move or delete, in its order; killed at any moment, it loses nothing. One dlq
    command at a time: a second one waits for nothing and says the queue is busy.
    """


def _selection_options(command: Callable[..., None]) -> Callable[..., None]:
    """The filters replay and purge share, handed to the command as one `selection`."""

    @functools.wraps(command)
    def with_selection(
        *args: object,
        errors: tuple[str, ...],
        task_id: UUID | None,
        older_than: datetime | None,
        newer_than: datetime | None,
        **kwargs: object,
    ) -> None:
        selection = Selection(
            errors=frozenset(errors),
            task_id=task_id,
            failed_before=older_than,
            failed_after=newer_than,
        )
        command(*args, selection=selection, **kwargs)

    wrapped: Callable[..., None] = with_selection
    for option in reversed(
        [
            click.option(
                "--error",
                "errors",
                multiple=True,
                metavar="CODE",
                help="Only this x-error code (repeatable), e.g. unknown_task.",
            ),
            click.option("--task", "task_id", type=click.UUID, help="Only this task's events."),
            click.option(
                "--older-than",
                metavar="AGE|TIME",
                callback=_moment_option,
                help="Only those that failed before: an age (30m, 2h, 3d) or an RFC 3339 time.",
            ),
            click.option(
                "--newer-than",
                metavar="AGE|TIME",
                callback=_moment_option,
                help="Only those that failed after: an age (30m, 2h, 3d) or an RFC 3339 time.",
            ),
            click.option("--limit", type=click.IntRange(min=1), help="At most this many messages."),
            click.option(
                "--dry-run", is_flag=True, help="Print what would happen; change nothing."
            ),
        ]
    ):
        wrapped = option(wrapped)
    return wrapped


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal; otherwise silence.

    The bar appears at the first step, so a question asked before it (purge's) stays readable.
    """
    if not sys.stderr.isatty():
        yield lambda _done, _total: None
        return
    bar = rich.progress.Progress(
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(),
        rich.progress.MofNCompleteColumn(),
        rich.progress.TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    shown: list[rich.progress.TaskID] = []

    def advance(done: int, total: int) -> None:
        if not shown:
            bar.start()
            shown.append(bar.add_task(description, total=total))
        bar.update(shown[0], completed=done, total=total)

    try:
        yield advance
    finally:
        bar.stop()


@dlq.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many of the newest to show.",
)
@click.pass_context
def dlq_list(ctx: click.Context, *, as_json: bool, sample: int) -> None:
    """Count the dead letters by error code and task, and show the newest few."""
    settings = _settings(ctx)
    topology = settings.topology
    with _progress("reading") as progress:
        found = _run(
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
    settings = _settings(ctx)
    letter = _run(
        lambda: replay.find(settings.amqp_url, topology=settings.topology, message_id=message_id)
    )
    click.echo(json.dumps(shown(letter), indent=2, ensure_ascii=False))


@dlq.command(name="replay")
@_selection_options
@click.option(
    "--max-replays",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Leave (and report) a message already replayed this many times.",
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
    settings = _settings(ctx)
    with _progress("replaying") as progress:
        outcome = _run(
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
@_selection_options
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
    if selection.is_everything and not everything:
        raise click.UsageError(
            "purge needs a filter (--error, --task, --older-than, --newer-than) or --all"
        )
    if everything and not selection.is_everything:
        raise click.UsageError("--all deletes every dead letter: give it no filter")
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not (yes or dry_run or interactive):
        raise click.UsageError("purge deletes messages: confirm with --yes (no terminal to ask)")
    settings = _settings(ctx)
    topology = settings.topology

    def confirm(size: int) -> bool:
        return click.confirm(
            f"Delete {selection.describe()} from {topology.dead_letter_queue}"
            f" ({size} messages in it)?",
            err=True,
        )

    with _progress("purging") as progress:
        outcome = _run(
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


# Producers and readers: publish, export, tail, schema.


def _json_object_option(
    _ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param=param) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object, like '{\"step\": 1}'", param=param)
    return parsed


@contextlib.contextmanager
def _counting(description: str, *, show: bool) -> Iterator[Callable[[str], None]]:
    """A live count on stderr when `show` (a terminal); yields a function that updates it."""
    if not show:
        yield lambda _text: None
        return
    bar = rich.progress.Progress(
        rich.progress.SpinnerColumn(),
        rich.progress.TextColumn("{task.description}"),
        rich.progress.TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=None)
        yield lambda text: bar.update(task, description=f"{description}: {text}")


@cli.command()
@click.option("--task", "task_id", type=click.UUID, help="The task the event belongs to.")
@click.option(
    "--type",
    "context_type",
    type=click.Choice([context_type.value for context_type in ContextType]),
    help="Its context type.",
)
@click.option("--content", help="Its content.")
@click.option("--metadata", metavar="JSON", callback=_json_object_option, help="A JSON object.")
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
    given = {name: value for name, value in fields.items() if value is not None}
    if source is not None:
        if given:
            raise click.UsageError("--file goes alone, without --task, --type, --content, ...")
        sent, refused = _publish_file(_settings(ctx), source)
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
    settings = _settings(ctx)

    async def run() -> UUID:
        async with HistoryPublisher(settings.amqp_url, exchange=settings.exchange) as publisher:
            return await publisher.publish(outgoing)

    click.echo(_run(run))


_REQUIRED = (("task", "task_id"), ("type", "context_type"), ("content", "content"))


def _publish_file(settings: Settings, source: BinaryIO) -> tuple[int, int]:
    """Publish every good line of `source`; report each bad one; return (sent, refused)."""
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
        with _counting("publishing", show=sys.stderr.isatty()) as count:
            async with HistoryPublisher(settings.amqp_url, exchange=settings.exchange) as publisher:
                async for index, error in publisher.publish_each(events()):
                    if error is None:
                        sent += 1
                    else:
                        refuse(line_of[index], error)
                    count(f"sent {sent}, refused {refused}")

    _run(run)
    return sent, refused


@cli.command()
@click.option("--typescript", is_flag=True, help="TypeScript types instead of the JSON Schema.")
def schema(*, typescript: bool) -> None:
    """Print the event's JSON Schema, or the TypeScript types of events and entries."""
    text = schema_module.typescript() if typescript else schema_module.event_json_schema_text()
    click.echo(text, nl=False)


@cli.command()
@click.option("--task", "task_id", type=click.UUID, help="One task's entries (default: all).")
@click.option("--workspace", "workspace_id", type=click.UUID, help="Entries of this workspace.")
@click.option("--session", "session_id", type=click.UUID, help="Entries of this session.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
@_filter_options
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write to this file (default: stdout).",
)
@click.pass_context
def export(ctx: click.Context, /, *, output: str, **selection: Any) -> None:  # noqa: ANN401  # flags
    """Write entries as JSON Lines, the seed's nine fields each, streamed from the database."""
    query = _query(**selection)
    settings = _settings(ctx)
    to_stdout = output == "-"
    # A count on the terminal, unless the entries themselves are going to that terminal.
    show_count = sys.stderr.isatty() and not (to_stdout and sys.stdout.isatty())

    async def run(sink: TextIO) -> int:
        written = 0
        with _counting("exporting", show=show_count) as count:
            async with Store(settings.database_url, max_connections=1) as store:
                entries = store.stream(query)
                try:
                    async for entry in entries:
                        sink.write(entry.model_dump_json())
                        sink.write("\n")
                        written += 1
                        if written % 1000 == 0:
                            count(f"{written} entries")
                finally:
                    await entries.aclose()
        return written

    if to_stdout:
        _run(lambda: run(sys.stdout))
        sys.stdout.flush()
        return
    try:
        sink = Path(output).open("w", encoding="utf-8")  # noqa: SIM115  # closed just below
    except OSError as exc:
        raise click.FileError(output, hint=exc.strerror) from None
    with sink:
        written = _run(lambda: run(sink))
    click.echo(f"exported {written} entries to {output}")


@cli.command()
@click.argument("task_id", type=click.UUID)
@click.option("--from-start", is_flag=True, help="Print the task's current history first.")
@click.option("--json", "as_json", is_flag=True, help="JSON, one object per line.")
@click.pass_context
def tail(ctx: click.Context, task_id: UUID, *, from_start: bool, as_json: bool) -> None:
    """Print a task's new entries as they are stored, until SIGINT or SIGTERM (exit 0).

    Woken by PostgreSQL notifications (LISTEN/NOTIFY), not by polling.
    """
    settings = _settings(ctx)

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

    _run(run)


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


def _line_of(entry: HistoryEntry) -> str:
    """One entry on one line: time, type, content (a line break in it shown as a backslash-n)."""
    created = entry.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    content = entry.content.replace("\\", "\\\\").replace("\n", "\\n")
    return f"{created}  {entry.context_type.value:<14}  {content}"


def _fail(message: str, code: int) -> int:
    click.echo(f"{PROG}: error: {message}", err=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911  # a return per exit path
    """Run the command line; return the exit code instead of raising on errors."""
    try:
        result = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        return _fail(exc.format_message().replace("\n", " ") + hint, 2)
    except click.ClickException as exc:
        return _fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except click.Abort:
        return _fail("interrupted", 1)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)
    except TaskHistoryError as exc:
        return _fail(str(exc), 1)
    except Exception as exc:  # noqa: BLE001  # the last line of defence: one line, never a traceback
        return _fail(redact(f"unexpected {type(exc).__name__}: {exc}"), 1)
    # standalone_mode=False returns the exit code of --help/--version, else the command's None.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
