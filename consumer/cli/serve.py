"""The `serve` command: the HTTP read API and the timeline page, until SIGTERM or SIGINT."""

from __future__ import annotations

import click

from consumer.cli.context import settings_from
from consumer.cli.options import api_address_options, json_option, print_json
from consumer.signals import run_until_stopped


@click.command()
@api_address_options
@json_option
@click.pass_context
def serve(ctx: click.Context, *, host: str | None, port: int | None, as_json: bool) -> None:
    """Serve the history over HTTP and the console page, until SIGTERM or SIGINT.

    Routes: /tasks (recent tasks), /tasks/ID/history, /workspaces/ID/history,
    /sessions/ID/history (and .../counts), the live /tasks/ID/history/stream, /dead-letters
    (and /letters, /timeline, /actions, /ID), /openapi.json, /metrics, /healthz, /readyz, and
    the console at /. With TASK_HISTORY_API_TOKEN set, all but the health checks and the page
    need `Authorization: Bearer TOKEN`. It answers only requests for its own names
    (TASK_HISTORY_API_ALLOWED_HOSTS). It only reads: give it a login that is a member of
    task_history_reader. With TASK_HISTORY_API_OPERATOR_TOKEN set, POST /dead-letters/replay
    and /dead-letters/purge replay and purge dead letters for that token only, through the
    login TASK_HISTORY_API_OPERATOR_DATABASE_URL (a member of task_history_operator).
    """
    from consumer.api.server import serve as run_server  # noqa: PLC0415  # loads the web stack

    settings = settings_from(ctx, api_host=host, api_port=port)

    def announce(url: str) -> None:
        if as_json:
            print_json({"url": url})
        else:
            click.echo(f"serving on {url}")

    run_until_stopped(lambda: run_server(settings, announce=announce))
