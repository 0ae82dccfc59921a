"""Structured logging: JSON off a terminal, readable on one, secrets never printed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

from consumer.inert import inert
from consumer.redaction import redact
from consumer.settings import LogFormat, LogLevel


class _Redactor:
    """A structlog processor that masks secrets in every string it is given."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = [secret for secret in secrets if secret]

    def __call__(
        self, _logger: object, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            if isinstance(value, str):
                event_dict[key] = redact(value, self._secrets)
            elif isinstance(value, BaseException):
                event_dict[key] = redact(repr(value), self._secrets)
        return event_dict


def _inert_strings(
    _logger: object, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every string field inert for a terminal (consumer.inert): logs quote message ids, details."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = inert(value, multiline=key == "exception")
    return event_dict


# The libraries whose own log lines a one-shot command keeps quiet (see configure_logging).
LIBRARY_LOGGERS = ("aiormq", "aio_pika", "asyncio", "asyncpg")


def configure_logging(
    *,
    log_format: LogFormat | None,
    level: LogLevel,
    secrets: Iterable[str] = (),
    quiet_libraries: bool = False,
) -> None:
    """Set up structlog to write to stderr; `log_format` None means: console on a terminal.

    With `quiet_libraries` (the one-shot commands, whose one error line already says what
    failed), the libraries' own log lines show only at the debug level.
    """
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor
    # JSON escapes every control character itself; a console line is written as it is.
    last: list[structlog.typing.Processor] = []
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer()
        last = [_inert_strings]
    else:
        renderer = structlog.processors.JSONRenderer()
    redactor = _Redactor(secrets)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            *last,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # sys.stderr looked up per logger, not frozen here: it may be swapped (tests, daemons).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_library_logs(renderer, [redactor, *last], level=level)
    for name in LIBRARY_LOGGERS:
        # NOTSET: the root's level applies again, as when a service configures logging.
        quiet = quiet_libraries and level != "debug"
        logging.getLogger(name).setLevel(logging.CRITICAL + 1 if quiet else logging.NOTSET)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]  # a stream handler of text
    """A handler that writes to whatever sys.stderr is when a record comes."""

    @property
    def stream(self) -> Any:  # noqa: ANN401  # a text stream
        """The current sys.stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        """Ignore the stream StreamHandler sets: it is always sys.stderr."""


def _one_line_error(
    _logger: object, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A library's exception as one `error` field instead of a traceback.

    aio-pika and aiormq log a traceback for every lost connection; the consumer logs the loss
    and the recovery itself, so the type and message are all an operator needs.
    """
    exc_info = event_dict.pop("exc_info", None)
    if isinstance(exc_info, tuple) and isinstance(exc_info[1], BaseException):
        event_dict["error"] = f"{type(exc_info[1]).__name__}: {exc_info[1]}"
    return event_dict


def _route_library_logs(
    renderer: structlog.typing.Processor,
    before: list[structlog.typing.Processor],
    *,
    level: LogLevel,
) -> None:
    """Send the libraries' standard-library logging through the same renderer, warnings up."""
    handler = _Stderr()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _one_line_error,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *before,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))
