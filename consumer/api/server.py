"""Running the API: uvicorn on a socket bound first (so a taken port is one clear error)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import resource
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import structlog
import uvicorn

from consumer.api.app import STARTUP_WAIT_SECONDS, create_app
from consumer.api.protocol import with_header_timeout
from consumer.api.state import ApiState
from consumer.errors import TaskHistoryError
from consumer.http import QuietServer, bind
from consumer.settings import Settings
from consumer.signals import stop_on_signals

log = structlog.get_logger()
# After SIGTERM, how long requests still running may take; the streams end at once.
GRACE_SECONDS = 5
KEEP_ALIVE_SECONDS = 5
HEADER_BYTES = 16 * 1024
# File descriptors beyond the connections: the database pool, the log, the listener.
SPARE_DESCRIPTORS = 256


class _Server(QuietServer):
    """The API's uvicorn: started once the store is open, stopped on the project's signals.

    With `signals`, SIGTERM and SIGINT stop it (exit 0, the streams ended at once); else its
    owner does.
    """

    def __init__(self, config: uvicorn.Config, *, state: ApiState, signals: bool = True) -> None:
        super().__init__(config)
        self._state = state
        self._signals = signals
        self.on_started: Callable[[], None] = lambda: None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Open the store, start as uvicorn does, then call `on_started` (unless that failed).

        A database error that waiting will not cure (no such database, a refused role) is
        raised from here, before uvicorn runs anything: `serve` exits 1 with that one line.
        """
        await self._state.open_first(within=STARTUP_WAIT_SECONDS)
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self.on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The project's signal handling, when this server owns the process's signals."""
        if not self._signals:
            yield
            return
        with stop_on_signals(self.stop):
            yield

    def stop(self) -> None:
        """Stop taking requests, end every stream, and let running requests finish."""
        super().stop()
        self._state.feeds.close()


def _server(
    settings: Settings, listener: socket.socket, *, signals: bool
) -> tuple[_Server, str, ApiState]:
    """The uvicorn server for the API of `settings` on `listener`, its URL and its state."""
    app = create_app(settings)
    state: ApiState = app.state.api
    config = uvicorn.Config(
        app,
        log_config=None,  # the project's logging (consumer.logs) takes uvicorn's records
        access_log=False,  # consumer.api.requests logs each request, in the project's format
        server_header=False,
        timeout_graceful_shutdown=GRACE_SECONDS,
        lifespan="on",
        # Slow or too many clients: a deadline for each request's line and headers, idle
        # kept-alive connections closed after 5 s, headers of at most 16 KiB, and past the
        # connection limit new requests answered 503.
        http=with_header_timeout(settings.api_header_timeout_seconds),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        h11_max_incomplete_event_size=HEADER_BYTES,
        limit_concurrency=settings.api_connection_limit,
    )
    server = _Server(config, state=state, signals=signals)
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    return server, f"http://{shown_host}:{port}", state


async def serve(settings: Settings, *, announce: Callable[[str], None]) -> None:
    """Serve the API until SIGTERM or SIGINT; `announce(url)` once it listens."""
    listener = bind(settings.api_host, settings.api_port)
    _allow_descriptors(settings.api_connection_limit + SPARE_DESCRIPTORS)
    server, url, _ = _server(settings, listener, signals=True)

    def started() -> None:
        _log_start(settings, listener, url)
        announce(url)

    server.on_started = started
    try:
        await server.serve(sockets=[listener])
    finally:
        listener.close()


def _log_start(settings: Settings, listener: socket.socket, url: str) -> None:
    """Say where the API listens, and warn when anyone who reaches it reads everything."""
    log.info("serving", url=url, token=settings.api_token is not None)
    if settings.api_token is None and not _loopback(listener):
        log.warning(
            "listening beyond loopback without a token: whoever reaches this address reads"
            " every history and dead letter; set TASK_HISTORY_API_TOKEN",
            url=url,
        )


def _loopback(listener: socket.socket) -> bool:
    """Whether `listener` listens on a loopback address only."""
    address = listener.getsockname()[0]
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _allow_descriptors(needed: int) -> None:
    """Raise this process's open-file limit to `needed` if it is lower and the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        log.warning(
            "the open-file limit is below the connection limit: connections beyond it fail",
            open_files=wanted,
            connection_limit=needed - SPARE_DESCRIPTORS,
        )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The API served in this event loop while the block runs, for tests and benchmarks.

    Yields its URL once it answers; stops it as SIGTERM would on the way out.
    """
    async with serving_with_state(settings) as (url, _state):
        yield url


@contextlib.asynccontextmanager
async def serving_with_state(settings: Settings) -> AsyncIterator[tuple[str, ApiState]]:
    """The same as `serving`, yielding the application's state too (its feeds, its store)."""
    listener = bind(settings.api_host, settings.api_port)
    _allow_descriptors(settings.api_connection_limit + SPARE_DESCRIPTORS)
    server, url, state = _server(settings, listener, signals=False)
    started = asyncio.Event()
    server.on_started = started.set
    running = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait([running, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if running.done():
            running.result()
            raise TaskHistoryError(f"the server at {url} stopped at once")
        _log_start(settings, listener, url)
        yield url, state
    finally:
        server.stop()
        await running
        listener.close()
