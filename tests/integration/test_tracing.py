"""One trace from an agent's publish, across RabbitMQ, to the consumer's write; and a reader's."""

from __future__ import annotations

import aiohttp
import asyncpg
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer.api.server import serving
from consumer.publisher import HistoryPublisher
from consumer.settings import Settings
from tests.harness import count_rows, running, wait_for
from tests.helpers import new_task
from tests.integration.test_api import api_settings

tracer = trace.get_tracer("an agent")


class TestOneTraceAcrossTheQueue:
    """The publisher's span context reaches the consumer's batch span through the headers."""

    async def test_publish_store_and_read(
        self,
        settings: Settings,
        database_url: str,
        sql: asyncpg.Connection,
        spans: InMemorySpanExporter,
    ) -> None:
        """The batch span links the publish's span; the API's span continues a reader's trace."""
        task = await new_task(sql)
        async with running(settings):
            async with HistoryPublisher(settings.amqp_url, exchange=settings.exchange) as sender:
                with tracer.start_as_current_span("agent turn") as turn:
                    await sender.publish(
                        {"task_id": task, "context_type": "agent_turn", "content": "traced"}
                    )
            await wait_for(lambda: count_rows(database_url), lambda n: n == 1)
        finished = spans.get_finished_spans()
        (batch,) = [span for span in finished if span.name.endswith(" process")]
        assert [link.context.span_id for link in batch.links] == [turn.get_span_context().span_id]
        (write,) = [span for span in finished if span.name == "task_build_history write"]
        assert write.parent is not None
        assert write.parent.span_id == batch.context.span_id

        spans.clear()
        with tracer.start_as_current_span("reader") as reader:
            context = reader.get_span_context()
        caller = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
        async with (
            serving(api_settings(database_url)) as url,
            aiohttp.ClientSession() as http,
            http.get(f"{url}/tasks/{task}/history", headers={"traceparent": caller}) as response,
        ):
            assert response.status == 200
        servers = [s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
        (served,) = [s for s in servers if s.name == "GET /tasks/{task_id}/history"]
        assert served.parent is not None
        assert (served.context.trace_id, served.parent.span_id) == (
            context.trace_id,
            context.span_id,
        )
        assert served.attributes is not None
        assert served.attributes["http.response.status_code"] == 200
