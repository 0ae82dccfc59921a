"""Traces across the queue with OpenTelemetry, when it is installed (the `tracing` extra).

The publisher writes the active trace context into each message's headers (W3C `traceparent`
and `tracestate`, by OpenTelemetry's configured propagator); the consumer makes a span per
batch, linked to the context each of its messages carried (a batch has many parents, so they
are links, not a parent), with a child span for the database write; `serve` makes a span per
request, continuing the caller's context. Without OpenTelemetry every function here does
nothing and costs a branch; with its API but no SDK configured, its own no-op tracer applies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Final

try:
    from opentelemetry import propagate, trace
except ImportError:  # the extra is not installed
    propagate = trace = None  # type: ignore[assignment]

# The instrumentation scope of every span made here.
SCOPE: Final = "task-build-history"
# Links kept on one batch's span at most: a batch holds up to 10,000 messages.
MAX_LINKS: Final = 128
# The headers a trace context travels in (W3C Trace Context).
CONTEXT_HEADERS: Final = ("traceparent", "tracestate")


def enabled() -> bool:
    """Whether OpenTelemetry is installed."""
    return trace is not None


def inject(headers: MutableMapping[str, Any]) -> None:
    """Write the active trace context into `headers` (nothing without an active span)."""
    if propagate is not None:
        propagate.inject(headers)


def _carried(headers: Mapping[str, object]) -> dict[str, str]:
    """The trace headers of a message, as text: anything else a publisher sent is not read."""
    return {name: value for name in CONTEXT_HEADERS if isinstance(value := headers.get(name), str)}


@contextlib.contextmanager
def batch_span(headers: Sequence[Mapping[str, object]]) -> Iterator[None]:
    """A consumer span for one batch, linked to the trace context each message carried."""
    if trace is None or propagate is None:
        yield
        return
    links = []
    for message_headers in headers:
        if "traceparent" not in message_headers:  # most messages: nothing to extract
            continue
        carried = _carried(message_headers)
        context = trace.get_current_span(propagate.extract(carried)).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context))
            if len(links) == MAX_LINKS:
                break
    tracer = trace.get_tracer(SCOPE)
    with tracer.start_as_current_span(
        "task_build_history.events process",
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={"messaging.system": "rabbitmq", "messaging.batch.message_count": len(headers)},
    ):
        yield


@contextlib.contextmanager
def span(name: str, **attributes: str | int) -> Iterator[None]:
    """An internal span named `name` (a database write), a child of the current one."""
    if trace is None:
        yield
        return
    with trace.get_tracer(SCOPE).start_as_current_span(name, attributes=attributes):
        yield


@contextlib.contextmanager
def request_span(method: str, route: str, headers: Mapping[str, str]) -> Iterator[Any]:
    """A server span for one HTTP request, continuing the caller's trace; yields the span."""
    if trace is None or propagate is None:
        yield None
        return
    parent = propagate.extract(_carried(headers))
    with trace.get_tracer(SCOPE).start_as_current_span(
        f"{method} {route}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route},
    ) as current:
        yield current
