"""Each request accounted for: one access log line, and the Prometheus metrics of `serve`."""

from __future__ import annotations

import contextlib
import importlib.util
import time
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumer import tracing
from consumer.metrics import DeadLetterCensus, new_registry

log = structlog.get_logger("access")

# A path or query longer than this is cut in the log line: they come from the client.
_LOGGED_CHARACTERS = 200
# FastAPI makes a span for each request itself once OpenTelemetry is installed (its
# `telemetry` package, in recent releases): then a span of ours would be a second one.
_TRACING_HERE = tracing.enabled() and importlib.util.find_spec("fastapi.telemetry") is None
# The request headers a caller's trace context comes in (W3C Trace Context).
_TRACE_HEADERS = frozenset(name.encode() for name in tracing.CONTEXT_HEADERS)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ApiMetrics:
    """The API's metrics, and the dead letters the database holds (one registry per app)."""

    def __init__(self) -> None:
        """Create every metric at zero."""
        self.registry = new_registry()
        r = self.registry
        self.dead_letters = DeadLetterCensus(r)
        self.requests = Counter(
            "task_history_api_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.seconds = Histogram(
            "task_history_api_request_seconds",
            "Time from a request to the end of its answer (a stream: until it ends), by route",
            ["route"],
            buckets=_SECONDS,
            registry=r,
        )
        self.streams = Gauge("task_history_api_streams", "Live streams open now", registry=r)
        self.streams_dropped = Counter(
            "task_history_api_streams_dropped",
            "Live streams ended because their reader fell too far behind",
            registry=r,
        )
        self.page_cut = Counter(
            "task_history_api_pages_cut",
            "History pages that stopped at the byte budget before their limit",
            registry=r,
        )


def route_of(scope: Scope) -> str:
    """The route template a request matched (`/tasks/{task_id}/history`), else `other`.

    Templates, not paths: a label per task id would grow without bound. The router leaves
    the route it matched in the request's scope.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "/static" if scope["path"].startswith("/static/") else "other"


def _cut(text: str) -> str:
    return text if len(text) <= _LOGGED_CHARACTERS else text[:_LOGGED_CHARACTERS] + "..."


class Accounting:
    """ASGI middleware: one log line per request when its answer ends, and its metrics.

    The line has the method, path, query, status, bytes sent, milliseconds and client address;
    never a header, so never the token (the log masks it anywhere else too).
    """

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        """Account for every request `app` answers in `metrics`."""
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer as `app` does; log and count once the answer has ended, however it ended."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0
        sent = 0

        async def counting(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        request_span: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if _TRACING_HERE:
            carried = {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in scope["headers"]
                if name in _TRACE_HEADERS
            }
            request_span = tracing.request_span(scope["method"], "HTTP", carried)
        with request_span as traced:
            try:
                await self._app(scope, receive, counting)
            finally:
                seconds = time.monotonic() - started
                route = route_of(scope)
                if traced is not None:  # named by its route once the router has matched it
                    traced.update_name(f"{scope['method']} {route}")
                    traced.set_attribute("http.route", route)
                    traced.set_attribute("http.response.status_code", status)
                self._metrics.requests.labels(route, str(status)).inc()
                self._metrics.seconds.labels(route).observe(seconds)
                client = scope.get("client")
                log.info(
                    "request",
                    method=scope["method"],
                    path=_cut(scope["path"]),
                    query=_cut(scope["query_string"].decode("latin-1")),
                    status=status,
                    bytes=sent,
                    ms=round(seconds * 1000, 1),
                    client=f"{client[0]}:{client[1]}" if client else None,
                )
