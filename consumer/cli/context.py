"""What every command shares: the program's name, its settings and a way to run a coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from consumer.logs import configure_logging
from consumer.redaction import url_secrets
from consumer.settings import Settings, load_settings

PROG = "task-history"
T = TypeVar("T")


@dataclass
class Invocation:
    """One run of the command line; `settings` is set once a command has loaded them."""

    # Logging is configured together with the settings: while this is None, nothing is.
    settings: Settings | None = None


def settings_from(ctx: click.Context, **overrides: object) -> Settings:
    """Settings with the global flags (and a command's `overrides`) applied; logging set up."""
    root = ctx.find_root()
    if not isinstance(root.obj, Invocation):  # a context made without main(), as tests do
        root.obj = Invocation()
    if root.obj.settings is None:
        settings = load_settings(**root.params, **overrides)
        configure_logging(
            log_format=settings.log_format,
            level=settings.log_level,
            secrets=url_secrets(settings.database_url, settings.amqp_url),
        )
        root.obj.settings = settings
    return root.obj.settings


def run_async(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine `coroutine()` makes in a new event loop; return its result."""
    return asyncio.run(coroutine())
