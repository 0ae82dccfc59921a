"""The `task-history` group: the global options, and every command registered under it."""

from __future__ import annotations

import click

from consumer.cli.context import PROG
from consumer.cli.deadletters import dlq
from consumer.cli.history import export, show, tail
from consumer.cli.publishing import publish, schema
from consumer.cli.service import consume, demo, expire, health, migrate, schedule


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", metavar="URL", help="PostgreSQL URL [TASK_HISTORY_DATABASE_URL]")
@click.option(
    "--amqp-url",
    metavar="URL",
    help="RabbitMQ URL, or several separated by commas [TASK_HISTORY_AMQP_URL]",
)
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


for _command in (
    migrate,
    consume,
    expire,
    schedule,
    health,
    demo,
    show,
    export,
    tail,
    publish,
    schema,
    dlq,
):
    cli.add_command(_command)
