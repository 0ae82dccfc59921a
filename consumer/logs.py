"""Structured logging: JSON off a terminal, readable on one, secrets never printed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import structlog

from consumer.settings import LogFormat, LogLevel

_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)@", re.IGNORECASE
)
_MASK = "***"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide passwords in URLs in `text`, and every one of `secrets`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _MASK)
    return _URL_PASSWORD.sub(rf"\g<head>{_MASK}@", text)


def url_secrets(*urls: str) -> list[str]:
    """The passwords in `urls`, to be masked wherever they show up."""
    return [password for url in urls if (password := urlsplit(url).password)]


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


def configure_logging(
    *, log_format: LogFormat | None, level: LogLevel, secrets: Iterable[str] = ()
) -> None:
    """Set up structlog to write to stderr; `log_format` None means: console on a terminal."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _Redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # sys.stderr looked up per logger, not frozen here: it may be swapped (tests, daemons).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
