"""The `serve` command: the HTTP read API and the timeline page, until SIGTERM or SIGINT."""

from __future__ import annotations

import click

from consumer.cli.context import settings_from
from consumer.signals import run_until_stopped


@click.command()
@click.option("--host", help="Interface to listen on [TASK_HISTORY_API_HOST; default: 127.0.0.1]")
@click.option(
    "--port",
    type=click.IntRange(0, 65_535),
    help="Port to listen on, 0 for any free one [TASK_HISTORY_API_PORT; default: 8080]",
)
@click.pass_context
def serve(ctx: click.Context, *, host: str | None, port: int | None) -> None:
    """Serve the history over HTTP (read-only) and the timeline page, until SIGTERM or SIGINT.

    Routes: /tasks/ID/history, /workspaces/ID/history, /sessions/ID/history, the live
    /tasks/ID/history/stream, /dead-letters, /openapi.json, /metrics, /healthz, /readyz, and
    the page at /. With TASK_HISTORY_API_TOKEN set, all but the health checks and the page need
    `Authorization: Bearer TOKEN`. It answers only requests for its own names
    (TASK_HISTORY_API_ALLOWED_HOSTS). Give it a database role that can only read: a login
    role that is a member of task_history_reader.
    """
    from consumer.api.server import serve as run_server  # noqa: PLC0415  # loads the web stack

    settings = settings_from(ctx, api_host=host, api_port=port)

    def announce(url: str) -> None:
        click.echo(f"serving on {url}")

    run_until_stopped(lambda: run_server(settings, announce=announce))
