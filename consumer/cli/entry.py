"""The entry point: run the command line, each failure an exit code and one line on stderr."""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Sequence

import click
import structlog

from consumer.cli.context import PROG, Invocation
from consumer.cli.output import OUTPUT_ERRNOS
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


# A reader that went away (`| head -1`): the exit status of a process SIGPIPE ends, as every
# other program in the pipeline gives it (128 + 13), and no message: nothing went wrong.
BROKEN_PIPE_EXIT = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code instead of raising on errors."""
    invocation = Invocation()
    try:
        result = cli.main(args=argv, prog_name=PROG, standalone_mode=False, obj=invocation)
        # Here, not at exit: a failing final flush would be Python's own message and status.
        if sys.stdout is not None:  # None when the caller closed it (`>&-`)
            sys.stdout.flush()
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():  # a socket's, say: an error like any other
            return _report(exc, invocation)
        _discard_stdout()
        return BROKEN_PIPE_EXIT
    except SystemExit:
        # Click turns a broken pipe inside a command into exit 1; others exit on purpose.
        if _stdout_reader_gone():
            _discard_stdout()
            return BROKEN_PIPE_EXIT
        raise
    except Exception as exc:  # noqa: BLE001  # the last line of defence: one line on stderr
        return _report(exc, invocation)
    # standalone_mode=False returns the exit code of --help/--version, else the command's None.
    return result if isinstance(result, int) else 0


def _report(exc: Exception, invocation: Invocation) -> int:
    """Say what failed in one line on stderr (or show a group's help); the exit code."""
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


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reading end has closed."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file behind stdout
        return False


def _asks_for_help(exc: Exception) -> bool:
    """Whether `exc` is click's way (8.2 and later) of saying a group was given no command."""
    # Click 8.1 prints the help itself and exits 0; it has no such class.
    no_command = getattr(click.exceptions, "NoArgsIsHelpError", None)
    return no_command is not None and isinstance(exc, no_command)


def _summary(exc: Exception) -> tuple[str, int]:  # noqa: PLR0911  # one case per kind
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
        case OSError() if exc.errno in OUTPUT_ERRNOS and exc.filename is None:
            _discard_stdout()  # what is still buffered can't be written either
            return f"can't write the output: {exc.strerror}", 1
        case TaskHistoryError():
            return str(exc), 1
        case _:
            return redact(f"unexpected {type(exc).__name__}: {exc}"), 1


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file behind stdout (a test's capture)
        return


def _database(url: str) -> str:
    """Which database `url` names, as an error line says it."""
    from consumer.store.pool import described  # noqa: PLC0415  # loads the driver: errors only

    return described(url)


def _notes(exc: Exception) -> str:
    """The notes added to `exc`, as ` (note; note)` for the same line; empty without notes."""
    notes = [redact(str(note).replace("\n", " ")) for note in getattr(exc, "__notes__", [])]
    return f" ({'; '.join(notes)})" if notes else ""
