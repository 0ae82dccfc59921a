"""What every command shares: the program's name, the global options, settings, a way to run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import structlog

from consumer.logs import configure_logging
from consumer.redaction import url_secrets
from consumer.settings import Settings, load_settings, unknown_variables_here

PROG = "task-history"
T = TypeVar("T")

# The services log what their libraries say (a lost connection, a retry); the one-shot
# commands say what failed in their one error line, and let libraries speak only at debug.
SERVICES = frozenset({"consume", "serve"})

_FLAGS = "task_history.flags"  # key of ctx.meta, which every nested context shares
# Click cuts a command's summary to fit one line, mid-sentence ("until..."); it is wrapped instead.
SUMMARY_LIMIT = 1000

log = structlog.get_logger("settings")


@dataclass
class Invocation:
    """One run of the command line; `settings` is set once a command has loaded them."""

    # Logging is configured together with the settings: while this is None, nothing is.
    settings: Settings | None = None


def _keep_flag(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: remember a global option given at any level; the last one given wins."""
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_FLAGS, {})[param.name] = value
    return value


# The options every command takes, before or after its name: `task-history dlq list
# --amqp-url URL` is `task-history --amqp-url URL dlq list`.
GLOBAL_OPTIONS: tuple[click.Option, ...] = (
    click.Option(
        ["--database-url"],
        metavar="URL",
        expose_value=False,
        callback=_keep_flag,
        help="PostgreSQL URL [TASK_HISTORY_DATABASE_URL]",
    ),
    click.Option(
        ["--amqp-url"],
        metavar="URL",
        expose_value=False,
        callback=_keep_flag,
        help="RabbitMQ URL, or several separated by commas [TASK_HISTORY_AMQP_URL]",
    ),
    click.Option(
        ["--log-format"],
        type=click.Choice(["console", "json"]),
        expose_value=False,
        callback=_keep_flag,
        help="Log style [TASK_HISTORY_LOG_FORMAT; default: console on a terminal, else json]",
    ),
    click.Option(
        ["--log-level"],
        type=click.Choice(["debug", "info", "warning", "error"]),
        expose_value=False,
        callback=_keep_flag,
        help="Least severe level logged [TASK_HISTORY_LOG_LEVEL; default: info]",
    ),
)


class _SharesGlobalOptions(click.Command):
    """A command that also takes the global options, listed apart in its help.

    They are added where click looks for a command's parameters (as it adds --help), not to
    `params`: those stay the command's own.
    """

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        """The command's own parameters, then the global options it lacks, then --help."""
        params = super().get_params(ctx)
        help_option = self.get_help_option(ctx)
        own = [param for param in params if param is not help_option]
        shared = [option for option in GLOBAL_OPTIONS if option not in self.params]
        return [*own, *shared, *([help_option] if help_option is not None else [])]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Its own options, then the global ones under a heading of their own."""
        shared = [option for option in GLOBAL_OPTIONS if option not in self.params]
        own = [
            record
            for param in self.get_params(ctx)
            if not isinstance(param, click.Argument) and param not in shared
            if (record := param.get_help_record(ctx)) is not None
        ]
        if own:
            with formatter.section("Options"):
                formatter.write_dl(own)
        records = [record for option in shared if (record := option.get_help_record(ctx))]
        if records:
            with formatter.section("Global options (before or after the command)"):
                formatter.write_dl(records)
        if isinstance(self, click.Group):
            self.format_commands(ctx, formatter)


class Command(_SharesGlobalOptions):
    """A command of `task-history`."""


class Group(_SharesGlobalOptions, click.Group):
    """A group of `task-history`: its commands, whatever made them, take the global options."""

    command_class = Command
    group_class = type  # a group made with @group.group() is of this class too

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with the whole first sentence of its help, wrapped, never cut short."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=SUMMARY_LIMIT)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Register `cmd` (and whatever it holds), giving it the global options."""
        share_global_options(cmd)
        super().add_command(cmd, name)


def share_global_options(command: click.Command) -> None:
    """Make a command built with plain click (`@click.command()`) take the global options."""
    if isinstance(command, _SharesGlobalOptions):
        return
    if type(command) is click.Command:
        command.__class__ = Command
    elif type(command) is click.Group:
        command.__class__ = Group
        for child in command.commands.values():
            share_global_options(child)


def settings_from(ctx: click.Context, **overrides: object) -> Settings:
    """Settings with the global flags (and a command's `overrides`) applied; logging set up."""
    root = ctx.find_root()
    if not isinstance(root.obj, Invocation):  # a context made without main(), as tests do
        root.obj = Invocation()
    if root.obj.settings is None:
        settings = load_settings(**ctx.meta.get(_FLAGS, {}), **overrides)
        configure_logging(
            log_format=settings.log_format,
            level=settings.log_level,
            secrets=[
                *url_secrets(settings.database_url, settings.amqp_url),
                *([settings.api_token.get_secret_value()] if settings.api_token else []),
            ],
            quiet_libraries=ctx.command.name not in SERVICES,
        )
        # A misspelt name is otherwise silently ignored, and its setting left at its default.
        for unknown in unknown_variables_here():
            log.warning(
                "unknown setting ignored",
                variable=unknown.name,
                set_in=unknown.source,
                did_you_mean=unknown.closest,
            )
        root.obj.settings = settings
    return root.obj.settings


def run_async(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine `coroutine()` makes in a new event loop; return its result."""
    return asyncio.run(coroutine())
