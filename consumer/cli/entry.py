"""The entry point: run the command line, each failure an exit code and one line on stderr."""

from __future__ import annotations

from collections.abc import Sequence

import click
import structlog

from consumer.cli.context import PROG, Invocation
from consumer.cli.root import cli
from consumer.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    NotMigratedError,
    TaskHistoryError,
)
from consumer.inert import inert
from consumer.redaction import redact

log = structlog.get_logger()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code instead of raising on errors."""
    invocation = Invocation()
    try:
        result = cli.main(args=argv, prog_name=PROG, standalone_mode=False, obj=invocation)
    except Exception as exc:  # the last line of defence: whatever failed, one line on stderr
        if _asks_for_help(exc) and isinstance(exc, click.UsageError) and exc.ctx is not None:
            # A group without a command (`task-history`, `task-history dlq`): its help.
            click.echo(exc.ctx.get_help())
            return 0
        # The traceback goes to the debug log. Logging is set up with the settings: before
        # that, structlog's defaults would print it to stdout at any level, so it is not logged.
        if invocation.settings is not None:
            log.debug("command failed", exc_info=exc)
        message, code = _summary(exc)
        if isinstance(exc, NotMigratedError | DatabaseUnavailableError) and invocation.settings:
            # So that the database migrated next, or checked, is the one the command used.
            message += f" [{_database(invocation.settings.database_url)}]"
        # An error may quote data (a message id, a line of a file): inert, like all data shown.
        click.echo(f"{PROG}: error: {inert(message + _notes(exc))}", err=True)
        return code
    # standalone_mode=False returns the exit code of --help/--version, else the command's None.
    return result if isinstance(result, int) else 0


def _asks_for_help(exc: Exception) -> bool:
    """Whether `exc` is click's way (8.2 and later) of saying a group was given no command."""
    # Click 8.1 prints the help itself and exits 0; it has no such class.
    no_command = getattr(click.exceptions, "NoArgsIsHelpError", None)
    return no_command is not None and isinstance(exc, no_command)


def _summary(exc: Exception) -> tuple[str, int]:
    """The one-line message of a failure, and the exit code it gives."""
    match exc:
        case click.UsageError():
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            return exc.format_message().replace("\n", " ") + hint, 2
        case click.ClickException():
            return exc.format_message().replace("\n", " "), exc.exit_code
        case click.Abort():
            return "interrupted", 1
        case ConfigurationError():
            return str(exc), 2
        case TaskHistoryError():
            return str(exc), 1
        case _:
            return redact(f"unexpected {type(exc).__name__}: {exc}"), 1


def _database(url: str) -> str:
    """Which database `url` names, as an error line says it."""
    from consumer.store.pool import described  # noqa: PLC0415  # loads the driver: errors only

    return described(url)


def _notes(exc: Exception) -> str:
    """The notes added to `exc`, as ` (note; note)` for the same line; empty without notes."""
    notes = [redact(str(note).replace("\n", " ")) for note in getattr(exc, "__notes__", [])]
    return f" ({'; '.join(notes)})" if notes else ""
