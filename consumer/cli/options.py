"""Options more than one command takes, and the callbacks that turn their text into values."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import click

from consumer.deadletters import ERROR_CODES, Selection
from consumer.entries import ContextType
from consumer.errors import InvalidCursorError
from consumer.inert import inert_json
from consumer.moments import parse_moment
from consumer.pages import Cursor, HistoryQuery

Command = Callable[..., None]

# The most a count option takes: far beyond any history, well inside what PostgreSQL takes.
MOST = 1_000_000_000


class NumberRange(click.FloatRange):
    """A number in a range, as click.FloatRange, that also refuses NaN (no range holds it)."""

    name = "float range"

    def convert(
        self,
        value: Any,  # noqa: ANN401  # click's signature: text, or a number already
        param: click.Parameter | None,
        ctx: click.Context | None,
    ) -> Any:  # noqa: ANN401  # click's signature
        """The number, or a usage error naming the range."""
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value} is not in the range {self._describe_range()}.", param, ctx)
        return number


def cursor_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> Cursor | None:
    """Click callback: the page cursor a read printed, decoded."""
    if value is None:
        return None
    try:
        return Cursor.decode(value)
    except InvalidCursorError:
        raise click.BadParameter(str(InvalidCursorError()), param=param) from None


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
    name: str, *, default: int, most: int, description: str
) -> Callable[[Command], Command]:
    """An option taking a whole number from 0 to `most`, with its default shown in the help."""
    return click.option(
        name,
        type=click.IntRange(min=0, max=most),
        default=default,
        show_default=True,
        help=description,
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


# Dead letters: the filters every dlq command takes, turned into a Selection.


def _error_codes(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Click callback: the --error codes, each one a dead letter can carry."""
    for value in values:
        if value not in ERROR_CODES:
            close = value.strip().lower().replace("-", "_")
            hint = f" (did you mean {close}?)" if close in ERROR_CODES and close != value else ""
            raise click.BadParameter(
                f"{value!r} is not a dead-letter error code{hint}; the codes are "
                + ", ".join(ERROR_CODES),
                param=param,
            )
    return values


def _one_of(
    first: tuple[str, datetime | None], second: tuple[str, datetime | None]
) -> datetime | None:
    """The value of whichever of two synonymous flags was given; a usage error for both."""
    if first[1] is not None and second[1] is not None:
        raise click.UsageError(f"{first[0]} and {second[0]} mean the same: give one of them")
    return first[1] if first[1] is not None else second[1]


def selection_options(command: Command) -> Command:
    """The filters of the dlq commands, handed to the command as one `selection`."""

    @functools.wraps(command)
    def with_selection(  # noqa: PLR0913  # one parameter per flag
        *args: object,
        errors: tuple[str, ...],
        task_id: UUID | None,
        older_than: datetime | None,
        until: datetime | None,
        newer_than: datetime | None,
        since: datetime | None,
        routing_key: str | None,
        text: str | None,
        ids: tuple[int, ...],
        **kwargs: object,
    ) -> None:
        before = _one_of(("--until", until), ("--older-than", older_than))
        after = _one_of(("--since", since), ("--newer-than", newer_than))
        if before is not None and after is not None and after >= before:
            raise click.UsageError("the time range is empty: --since must be earlier than --until")
        selection = Selection(
            errors=frozenset(errors),
            task_id=task_id,
            failed_before=before,
            failed_after=after,
            routing_key=routing_key,
            text=text or None,
            ids=frozenset(ids),
        )
        command(*args, selection=selection, **kwargs)

    moment = "an age (30m, 2h, 3d) or an RFC 3339 time"
    return _with_options(
        with_selection,
        (
            click.option(
                "--error",
                "errors",
                multiple=True,
                metavar="CODE",
                callback=_error_codes,
                help=f"Only this error code (repeatable): {', '.join(ERROR_CODES)}.",
            ),
            click.option("--task", "task_id", type=click.UUID, help="Only this task's events."),
            click.option(
                "--since",
                metavar="AGE|TIME",
                callback=_moment_option,
                help=f"Only those that failed at or after this: {moment}.",
            ),
            click.option(
                "--until",
                metavar="AGE|TIME",
                callback=_moment_option,
                help=f"Only those that failed before this: {moment}.",
            ),
            click.option(
                "--newer-than",
                metavar="AGE|TIME",
                callback=_moment_option,
                help="The same as --since.",
            ),
            click.option(
                "--older-than",
                metavar="AGE|TIME",
                callback=_moment_option,
                help="The same as --until.",
            ),
            click.option(
                "--routing-key",
                metavar="KEY",
                help="Only those first published with this routing key.",
            ),
            click.option(
                "--text",
                metavar="TEXT",
                help="Only those whose detail or message id holds TEXT, in any case (A to Z).",
            ),
            click.option(
                "--id",
                "ids",
                multiple=True,
                type=click.IntRange(1, 2**63 - 1),
                metavar="ID",
                help="Only the letter with this row id, as `list` shows it (repeatable).",
            ),
        ),
    )


def limit_option(what: str) -> Callable[[Command], Command]:
    """--limit N: at most N of `what`."""
    return click.option(
        "--limit", type=click.IntRange(1, MOST), metavar="N", help=f"At most this many {what}."
    )


def api_address_options(command: Command) -> Command:
    """--host and --port: where the HTTP API and the page listen (`serve`, `up`)."""
    return _with_options(
        command,
        [
            click.option(
                "--host",
                help="Interface to listen on [TASK_HISTORY_API_HOST; default: 127.0.0.1]",
            ),
            click.option(
                "--port",
                type=click.IntRange(0, 65_535),
                help="Port to listen on, 0 for any free one [TASK_HISTORY_API_PORT; default: 8080]",
            ),
        ],
    )


def json_option(command: Command) -> Command:
    """--json: the result as one JSON object on stdout, for scripts; messages stay on stderr."""
    return click.option(
        "--json", "as_json", is_flag=True, help="The result as one JSON object, for scripts."
    )(command)


def print_json(document: object) -> None:
    """One JSON object on one line, inert for a terminal (consumer.inert)."""
    click.echo(inert_json(json.dumps(document, ensure_ascii=False)))


def dry_run_option(command: Command) -> Command:
    """--dry-run: print what would happen, change nothing."""
    return click.option("--dry-run", is_flag=True, help="Print what would happen; change nothing.")(
        command
    )
