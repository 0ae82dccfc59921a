"""The `task-history` command line: exit 0 on success, 1 on a failure, 2 on a usage error."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar
from uuid import UUID

import click
import structlog
from rich.console import Console
from rich.table import Table

from consumer.broker import Broker
from consumer.entries import HistoryEntry
from consumer.errors import ConfigurationError, TaskHistoryError
from consumer.logs import configure_logging, redact, url_secrets
from consumer.settings import Settings, load_settings
from consumer.store import Store
from consumer.worker import consume as run_consumer
from consumer.worker import topology_of

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
            async with Broker(settings.amqp_url, topology=topology_of(settings)) as broker:
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
@click.argument("task_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="JSON, one object per line.")
@click.option("--array", is_flag=True, help="With --json: one JSON array instead of lines.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
@click.pass_context
def show(
    ctx: click.Context, task_id: UUID, *, as_json: bool, array: bool, limit: int | None
) -> None:
    """Print a task's history, oldest first."""
    if array and not as_json:
        raise click.UsageError("--array goes with --json")
    settings = _settings(ctx)

    async def run() -> list[HistoryEntry]:
        async with Store(settings.database_url, max_connections=1) as store:
            return await store.find_by_task(task_id, limit=limit)

    entries = _run(run)
    if as_json:
        _print_json(entries, array=array)
    else:
        _print_table(task_id, entries)


def _print_json(entries: Sequence[HistoryEntry], *, array: bool) -> None:
    lines = [entry.model_dump_json() for entry in entries]
    if array:
        click.echo("[" + ",\n".join(lines) + "]")
    else:
        for line in lines:
            click.echo(line)


def _print_table(task_id: UUID, entries: Sequence[HistoryEntry]) -> None:
    console = Console(soft_wrap=False)
    if not entries:
        console.print(f"task {task_id} has no history", highlight=False)
        return
    console.print(f"task {task_id}: {len(entries)} entries, oldest first", highlight=False)
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
