"""The `task-history` program: the command line, or one line saying what to install for it.

A publisher-only install (`pip install task-build-history`) has the library but not what the
command line runs on; those come with the `service` extra. Checked before anything is imported,
so the program says which extra to install rather than failing with a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Final

# What the command line, the consumer and the API import, beyond the publishing library.
SERVICE_MODULES: Final = (
    "asyncpg",
    "click",
    "dotenv",
    "fastapi",
    "prometheus_client",
    "pydantic_settings",
    "rich",
    "starlette",
    "structlog",
    "uvicorn",
)


def missing_service_modules() -> list[str]:
    """The modules of the `service` extra that can't be imported here."""
    return [name for name in SERVICE_MODULES if importlib.util.find_spec(name) is None]


def run() -> None:
    """Run `task-history`; exit 1 with one line if the `service` extra is not installed."""
    missing = missing_service_modules()
    if missing:
        sys.exit(
            "task-history: error: the command line needs the service extra, not installed here"
            f" (no {', '.join(missing)}): pip install 'task-build-history[service]'"
        )
    from consumer.cli import main  # noqa: PLC0415  # only once its modules are known to be there

    sys.exit(main())
