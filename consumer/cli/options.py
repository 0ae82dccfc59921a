"""Options more than one command takes, and the callbacks that turn their text into values."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import click

from consumer.deadletters import Selection
from consumer.entries import ContextType
from consumer.errors import InvalidCursorError
from consumer.moments import parse_moment
from consumer.pages import Cursor, HistoryQuery

Command = Callable[..., None]


def cursor_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> Cursor | None:
    """Click callback: the page cursor a read printed, decoded."""
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


def json_object_option(
    _ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, Any] | None:
    """Click callback: a JSON object, parsed."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param=param) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object, like '{\"step\": 1}'", param=param)
    return parsed


def non_negative_option(
    name: str, *, default: int, description: str
) -> Callable[[Command], Command]:
    """An option taking a whole number from 0, with its default shown in the help."""
    return click.option(
        name, type=click.IntRange(min=0), default=default, show_default=True, help=description
    )


def _with_options(command: Command, options: Sequence[Callable[[Command], Command]]) -> Command:
    """`command` with `options`, listed in the help in their order."""
    for option in reversed(options):
        command = option(command)
    return command


# Reads: the flags show and export share, turned into a HistoryQuery.


def filter_options(command: Command) -> Command:
    """The filters every read takes: context types, a time range, the order."""
    return _with_options(
        command,
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
        ),
    )


def history_query(
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


# Dead letters: the flags replay and purge share, turned into a Selection.


def selection_options(command: Command) -> Command:
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

    return _with_options(
        with_selection,
        (
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
        ),
    )
