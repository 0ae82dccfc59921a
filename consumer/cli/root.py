"""The `task-history` group: the global options, and every command registered under it."""

from __future__ import annotations

import click

from consumer.cli.context import GLOBAL_OPTIONS, PROG, Group
from consumer.cli.deadletters import dlq
from consumer.cli.history import export, show, tail
from consumer.cli.publishing import publish, schema
from consumer.cli.serve import serve
from consumer.cli.service import consume, demo, expire, health, migrate, schedule, up


@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    params=list(GLOBAL_OPTIONS),
)
@click.version_option(package_name="task-build-history", prog_name=PROG)
def cli() -> None:
    """Keep the build history of tasks run by AI coding agents.

    Settings come from TASK_HISTORY_* environment variables and a .env file in the working
    directory; the flags above override them, given before or after the command.
    """


for _command in (
    up,
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
    serve,
):
    cli.add_command(_command)
