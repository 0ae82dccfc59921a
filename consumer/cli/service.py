"""Running the service: migrate, consume, expire, schedule, health, and a demo stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.error
import urllib.request

import click
import structlog

from consumer import schedule as expiry_schedule
from consumer.cli.context import Command, run_async, settings_from
from consumer.cli.options import (
    MOST,
    NumberRange,
    api_address_options,
    json_option,
    print_json,
)
from consumer.errors import NotConnectedError, TaskHistoryError
from consumer.inert import inert
from consumer.settings import Settings
from consumer.signals import run_until_stopped, stop_on_signals

# The stream `demo` and `up --demo` publish by default.
DEMO_AGENTS = 3
DEMO_RATE = 2.0


@click.command(cls=Command)
@click.option("--skip-broker", is_flag=True, help="Migrate the database only; declare nothing.")
@json_option
@click.pass_context
def migrate(ctx: click.Context, *, skip_broker: bool, as_json: bool) -> None:
    """Apply the pending SQL migrations and declare the AMQP topology (both idempotent)."""
    done = _migrate(settings_from(ctx), declare=not skip_broker, quiet=as_json)
    if as_json:
        print_json(done)


def _migrate(settings: Settings, *, declare: bool, quiet: bool) -> dict[str, object]:
    """Apply the migrations and (with `declare`) declare the topology; what was done.

    It is said in lines on stdout too, unless `quiet` (the caller prints JSON).
    """
    from consumer.broker.client import Broker  # noqa: PLC0415  # loads aio-pika: at run time only
    from consumer.store import Store  # noqa: PLC0415  # loads asyncpg: at run time only

    async def run() -> list[str]:
        async with Store(settings.database_url, max_connections=1) as store:
            return await store.migrate()

    applied = run_async(run)
    for name in [] if quiet else applied:
        click.echo(f"applied {name}")
    if not (applied or quiet):
        click.echo("database is up to date")
    if not sys.stderr.isatty():  # a log (a container's, a CI's) keeps it; a terminal has it
        structlog.get_logger().info("migrated", applied=applied)
    declared = None
    if declare:

        async def run_declare() -> None:
            async with Broker(settings.amqp_url, topology=settings.topology) as broker:
                await broker.declare()

        run_async(run_declare)
        declared = {"exchange": settings.exchange, "queue": settings.queue}
        if not quiet:
            click.echo(f"declared exchange {settings.exchange} and queue {settings.queue}")
    return {"applied": applied, "declared": declared}


@click.command(cls=Command)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    help="Events per batch (one INSERT) at most [TASK_HISTORY_BATCH_SIZE; default: 500]",
)
@click.option(
    "--batch-wait-ms",
    type=click.IntRange(0, 60_000),
    help="Longest a batch keeps growing while events keep arriving; not a wait"
    " [TASK_HISTORY_BATCH_WAIT_MS; default: 50]",
)
@click.option(
    "--prefetch",
    type=click.IntRange(1, 65_535),
    help="Unacked messages the broker may send at most"
    " [TASK_HISTORY_PREFETCH; default: twice the batch size]",
)
@click.pass_context
def consume(ctx: click.Context, /, **options: int | None) -> None:
    """Move events from RabbitMQ to PostgreSQL until SIGTERM or SIGINT."""
    from consumer import worker  # noqa: PLC0415  # loads asyncpg and aio-pika: at run time only

    settings = settings_from(ctx, **options)
    try:
        run_until_stopped(lambda: worker.consume(settings))
    except Exception as exc:
        if isinstance(exc, NotConnectedError) or not isinstance(exc, TaskHistoryError):
            # A bug, not an outage: the log of a crashed container must say where it was.
            structlog.get_logger().exception("consumer crashed")
        raise


@click.command(cls=Command)
@click.option(
    "--demo",
    is_flag=True,
    help=f"Also publish a realistic stream from {DEMO_AGENTS} simulated agents, which create"
    " their tasks.",
)
@api_address_options
@json_option
@click.pass_context
def up(
    ctx: click.Context, *, demo: bool, host: str | None, port: int | None, as_json: bool
) -> None:
    """Migrate, then consume and serve the API and console page in one process, until Ctrl-C.

    One command to see it work on one machine: what `migrate`, `consume` and `serve` do, and
    with --demo what `demo` does, together. In production run them apart, each on its own.
    """
    from consumer.all_in_one import run_all  # noqa: PLC0415  # loads every client

    settings = settings_from(ctx, api_host=host, api_port=port)
    migrated = _migrate(settings, declare=True, quiet=as_json)

    def announce(url: str) -> None:
        if as_json:
            print_json({"url": url, "demo": demo, "applied": migrated["applied"]})
            return
        click.echo(f"serving on {url}")
        if demo:
            click.echo(f"publishing a demo stream from {DEMO_AGENTS} agents")
        click.echo(f"open {url}/ to see the tasks and their entries (Ctrl-C to stop)")

    stream = (DEMO_AGENTS, DEMO_RATE) if demo else None
    run_until_stopped(lambda: run_all(settings, demo=stream, announce=announce))


@click.command(cls=Command)
@json_option
@click.pass_context
def expire(ctx: click.Context, *, as_json: bool) -> None:
    """Delete expired entries and old dead letters now; print how many of each went."""
    from consumer.expiry import Expired  # noqa: PLC0415  # the same
    from consumer.store import Store  # noqa: PLC0415  # loads asyncpg: at run time only

    settings = settings_from(ctx)

    async def run() -> Expired:
        async with Store(settings.database_url, max_connections=1) as store:
            return await store.expire(batch_size=settings.expire_batch_size)

    deleted = run_async(run)
    if as_json:
        print_json(deleted._asdict())
        return
    entries = f"{deleted.entries} expired {'entry' if deleted.entries == 1 else 'entries'}"
    letters = f"{deleted.dead_letters} dead {'letter' if deleted.dead_letters == 1 else 'letters'}"
    click.echo(f"deleted {entries} and {letters} past their retention")


@click.command(cls=Command)
@click.option(
    "--cron",
    "schedule",
    default=expiry_schedule.DEFAULT_SCHEDULE,
    show_default=True,
    metavar="SCHEDULE",
    help="When pg_cron runs expiry, in cron syntax, GMT.",
)
@click.option("--unschedule", is_flag=True, help="Remove the job; the consumers expire again.")
@json_option
@click.pass_context
def schedule(ctx: click.Context, *, schedule: str, unschedule: bool, as_json: bool) -> None:
    """Let pg_cron run expiry in the database; the consumers' expiry loops then stand down."""
    if not expiry_schedule.is_schedule(schedule):
        raise click.BadParameter(
            "five cron fields (like '*/5 * * * *') or @hourly, @daily …", param_hint="--cron"
        )
    settings = settings_from(ctx)
    if unschedule:
        gone = run_async(lambda: expiry_schedule.unschedule_expiry(settings.database_url))
        if as_json:
            print_json({"removed": None if gone is None else gone.name})
        elif gone is None:
            click.echo("no pg_cron expiry job was registered")
        else:
            click.echo(f"removed pg_cron job {gone.name}; the consumers expire entries again")
        return
    job = run_async(
        lambda: expiry_schedule.schedule_expiry(
            settings.database_url, schedule=schedule, batch_size=settings.expire_batch_size
        )
    )
    if as_json:
        print_json(
            {
                "job": job.name,
                "cron_database": job.cron_database,
                "database": job.database,
                "schedule": job.schedule,
            }
        )
        return
    click.echo(
        f"pg_cron job {job.name} (in database {job.cron_database}) expires entries of"
        f" {job.database} at '{job.schedule}' (GMT); the consumers' expiry loops stand down"
    )


@click.command(cls=Command)
@click.option("--ready", is_flag=True, help="Ask /readyz (consuming) instead of /healthz (alive).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the consumer runs.")
@json_option
@click.pass_context
def health(ctx: click.Context, *, ready: bool, host: str, as_json: bool) -> None:
    """Ask a running consumer whether it is alive (or ready); exit 1 if not. For health checks.

    With --json, stdout has {"url", "code", "status"} whatever the answer (code and status are
    null when nothing answers); the exit code and the error line on stderr are the same.
    """
    settings = settings_from(ctx)
    if not settings.metrics_port:
        raise click.UsageError("TASK_HISTORY_METRICS_PORT is 0: the consumer serves no health")
    path = "/readyz" if ready else "/healthz"
    url = f"http://{host}:{settings.metrics_port}{path}"
    code: int | None = None
    status: str | None = None
    failure: str | None = None
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            code, status = response.status, _status(response.read())
    except urllib.error.HTTPError as exc:
        code, status = exc.code, _status(exc.read())
        failure = f"{path}: {code} {status}"
    except OSError as exc:
        failure = f"{url} does not answer: {exc}"
    if as_json:
        print_json({"url": url, "code": code, "status": status})
    elif failure is None:
        click.echo(status)
    if failure is not None:
        raise TaskHistoryError(failure)


def _status(body: bytes) -> str:
    """The `status` of a health answer (`{"status": "ready"}`), else its text as it came."""
    text = body.decode(errors="replace").strip()
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return inert(str(json.loads(text)["status"]))
    return inert(text)


@click.command(cls=Command)
@click.option(
    "--agents",
    type=click.IntRange(1, 100),
    default=DEMO_AGENTS,
    show_default=True,
    help="How many agents publish at once, each through its own tasks.",
)
@click.option(
    "--rate",
    type=NumberRange(0.01, 1000),
    default=DEMO_RATE,
    show_default=True,
    help="Events per second per agent, on average.",
)
@click.option(
    "--count", type=click.IntRange(1, MOST), metavar="N", help="Stop after this many events."
)
@json_option
@click.pass_context
def demo(ctx: click.Context, *, agents: int, rate: float, count: int | None, as_json: bool) -> None:
    """Publish a realistic stream from simulated agents until SIGTERM/SIGINT (or --count)."""
    from consumer.demo import run_demo  # noqa: PLC0415  # loads asyncpg and aio-pika: run time

    settings = settings_from(ctx)
    published = 0

    def announce() -> None:
        each = f"about {rate:g} event{'' if rate == 1 else 's'}/s each"
        click.echo(f"publishing from {agents} agents, {each} (Ctrl-C to stop)", err=True)

    async def run() -> None:
        nonlocal published
        stop = asyncio.Event()
        with stop_on_signals(stop.set):  # a stop ends the agents' stories, then counts
            published = await run_demo(
                settings, agents=agents, rate=rate, count=count, stop=stop, started=announce
            )

    run_until_stopped(run)
    if as_json:
        print_json({"published": published})
    else:
        click.echo(f"published {published} events")
