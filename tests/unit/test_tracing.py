"""Traces across the queue: the publisher's context in the headers, the consumer's batch span."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer import tracing
from tests.unit.test_pipeline import Bench

tracer = trace.get_tracer("tests")


def traceparent(span: trace.Span) -> str:
    """The W3C traceparent header of `span`."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class TestThePublisherSide:
    """inject() writes the active span's context, and nothing without one."""

    def test_the_active_span_goes_into_the_headers(self, spans: InMemorySpanExporter) -> None:
        """Inside a span: a traceparent naming it."""
        headers: dict[str, Any] = {}
        with tracer.start_as_current_span("agent step") as step:
            tracing.inject(headers)
        assert headers["traceparent"] == traceparent(step)
        assert [span.name for span in spans.get_finished_spans()] == ["agent step"]

    def test_no_span_no_header(self, spans: InMemorySpanExporter) -> None:
        """Outside any span the headers stay empty: nothing to continue."""
        headers: dict[str, Any] = {}
        tracing.inject(headers)
        assert headers == {}
        assert spans.get_finished_spans() == ()


class TestTheConsumerSide:
    """A batch is one span, linked to each message's context, its write a child span."""

    async def test_a_batch_links_every_publishers_span(self, spans: InMemorySpanExporter) -> None:
        """Three messages from two traces: one batch span with their links, one write span."""
        bench = Bench()
        with tracer.start_as_current_span("agent a") as first:
            a = traceparent(first)
        with tracer.start_as_current_span("agent b") as second:
            b = traceparent(second)
        spans.clear()
        await bench.handle(
            bench.message("one", headers={"traceparent": a}),
            bench.message("two", headers={"traceparent": b}),
            bench.message("three"),  # no context: no link
        )
        batch, write = sorted(spans.get_finished_spans(), key=lambda span: span.name)[::-1]
        assert batch.name == "task_build_history.events process"
        assert batch.kind is trace.SpanKind.CONSUMER
        assert batch.parent is None  # a batch has many parents: links, not one of them
        linked = {link.context.span_id for link in batch.links}
        assert linked == {first.get_span_context().span_id, second.get_span_context().span_id}
        assert batch.attributes is not None
        assert batch.attributes["messaging.batch.message_count"] == 3
        assert write.name == "task_build_history write"
        assert write.parent is not None
        assert write.parent.span_id == batch.context.span_id

    @pytest.mark.parametrize(
        "carried",
        [
            {"traceparent": "00-not-a-context-01"},
            {"traceparent": b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"},
            {"traceparent": 42},
            {"traceparent": {"nested": "table"}},
        ],
    )
    async def test_what_is_no_context_is_no_link(
        self, spans: InMemorySpanExporter, carried: dict[str, Any]
    ) -> None:
        """A malformed or non-text traceparent from a publisher is ignored: stored, no link."""
        bench = Bench()
        await bench.handle(bench.message("x", headers=carried))
        assert bench.store.contents == ["x"]
        (batch,) = [s for s in spans.get_finished_spans() if s.name.endswith("process")]
        assert batch.links == ()

    async def test_links_are_bounded(self, spans: InMemorySpanExporter) -> None:
        """A batch of 300 traced messages keeps MAX_LINKS links, not 300."""
        bench = Bench()
        with tracer.start_as_current_span("agent") as agent:
            carried = {"traceparent": traceparent(agent)}
        await bench.handle(*(bench.message(f"n{n}", headers=carried) for n in range(300)))
        (batch,) = [s for s in spans.get_finished_spans() if s.name.endswith("process")]
        assert len(batch.links) == tracing.MAX_LINKS


class TestTheApiSide:
    """request_span continues a caller's trace (where FastAPI does not trace requests itself)."""

    def test_a_server_span_under_the_callers_context(self, spans: InMemorySpanExporter) -> None:
        """The caller's traceparent is the parent; a malformed one starts a new trace."""
        with tracer.start_as_current_span("reader") as reader:
            caller = traceparent(reader)
        spans.clear()
        with tracing.request_span("GET", "/tasks", {"traceparent": caller}) as current:
            assert current is not None
        with tracing.request_span("GET", "/tasks", {"traceparent": "garbage"}):
            pass
        continued, fresh = spans.get_finished_spans()
        assert continued.kind is trace.SpanKind.SERVER
        assert continued.parent is not None
        assert continued.parent.span_id == reader.get_span_context().span_id
        assert fresh.parent is None


class TestWithoutOpenTelemetry:
    """Without the extra installed, tracing does nothing and nothing fails."""

    def test_every_function_is_a_no_op(self) -> None:
        """With `opentelemetry` not importable: not enabled, no header, the spans just run."""
        script = """
import sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
from consumer import tracing
assert not tracing.enabled()
headers = {}
tracing.inject(headers)
assert headers == {}
with tracing.batch_span([{"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}]):
    with tracing.span("write", rows=1):
        pass
with tracing.request_span("GET", "/", {}) as current:
    assert current is None
print("ok")
"""
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
