"""Prometheus metrics of the consumer, and the HTTP server for them and the health checks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime

import structlog
import uvicorn
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.deadletters import ERROR_CODES
from consumer.errors import ConfigurationError, TaskHistoryError
from consumer.http import QuietServer, bind

log = structlog.get_logger("metrics")


# What /readyz asks: None when ready, else why not (one short line).
Readiness = Callable[[], Awaitable[str | None]]

_BATCH_SIZES = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)
_WRITE_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Lag runs from milliseconds (a live stream) to hours (a backlog drained after an outage).
_LAG_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400)


# The codes a dead letter's series is labelled with: the consumer's and the broker's. A code
# that another tool wrote in x-error counts as "other", so no label grows without bound.
KNOWN_CODES = (*ERROR_CODES, "other")


def metric_code(code: str) -> str:
    """The label a dead letter with `code` is counted under."""
    return code if code in KNOWN_CODES else "other"


def new_registry() -> CollectorRegistry:
    """A registry of a process's own, with the usual process_* and python_* series.

    One registry per worker or application, not the process-wide default: two of them in one
    process (tests) count separately.
    """
    # A `_created` series beside every counter and histogram doubles what is scraped for a time
    # no query here needs (a restart shows as a counter reset anyway). The switch is the
    # library's, process-wide: thrown where a process makes its metrics.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Metrics:
    """The consumer's counters and histograms: what this process did, since it started."""

    def __init__(self) -> None:
        """Create every metric at zero."""
        self.registry = new_registry()
        r = self.registry
        self.received = Counter(
            "task_history_events_received", "Messages taken from the events queue", registry=r
        )
        self.stored = Counter(
            "task_history_events_stored", "Events written as new rows", registry=r
        )
        self.duplicates = Counter(
            "task_history_events_duplicate",
            "Events whose id was already stored (redeliveries, republished events)",
            registry=r,
        )
        self.dead_lettered = Counter(
            "task_history_events_dead_lettered",
            "Messages stored as dead letters, by x-error code (other: a code of another tool)",
            ["code"],
            registry=r,
        )
        self.routing_key_mismatches = Counter(
            "task_history_routing_key_mismatches",
            "Events whose routing key was not history.<context_type>: stored by their"
            " context_type all the same",
            registry=r,
        )
        self.waiting_for_task = Counter(
            "task_history_events_waiting_for_task",
            "Events parked in the retry queue because their task does not exist yet",
            registry=r,
        )
        self.refused_parked = Counter(
            "task_history_events_refused_waiting",
            "Events whose row the database refused, parked in the retry queue to be tried again"
            " (dead-lettered as database_rejected once TASK_HISTORY_REFUSED_ROW_RETRY_SECONDS"
            " have passed)",
            registry=r,
        )
        self.ignored_values = Counter(
            "task_history_ignored_values",
            "Property and header values a message carried that the consumer did not believe or"
            " keep, by kind: unsigned (its own header on a copy it did not sign), out_of_range"
            " (a wrong type or out of bounds), too_deep (headers nested past 32 levels)",
            ["kind"],
            registry=r,
        )
        self.batch_retries = Counter(
            "task_history_batch_retries",
            "Batch attempts that failed on a server error and were tried again",
            registry=r,
        )
        self.batch_size = Histogram(
            "task_history_batch_messages",
            "Messages per batch",
            buckets=_BATCH_SIZES,
            registry=r,
        )
        self.write_seconds = Histogram(
            "task_history_batch_write_seconds",
            "Time to write a batch's rows to PostgreSQL (the INSERT, its trim included)",
            buckets=_WRITE_SECONDS,
            registry=r,
        )
        self.lag_seconds = Histogram(
            "task_history_event_lag_seconds",
            "From an event's created_at to its row being committed",
            buckets=_LAG_SECONDS,
            registry=r,
        )
        self.expiry_runs = Counter(
            "task_history_expiry_runs",
            "Expiry intervals of this consumer, by outcome: done, locked (another replica ran"
            " it), scheduled (left to pg_cron), failed",
            ["outcome"],
            registry=r,
        )
        self.expired = Counter(
            "task_history_expired_entries", "Expired entries deleted by this consumer", registry=r
        )
        self.ready = Gauge(
            "task_history_ready",
            "1 while /readyz says ready: consuming, both servers answering, no stall; else 0",
            registry=r,
        )
        self.database_refusing = Gauge(
            "task_history_database_refusing",
            "1 while the database refuses the consumer's writes for a reason that is not any"
            " row's (a revoked grant, a read-only server); the batch waits meanwhile; else 0",
            registry=r,
        )
        self.paused = Gauge(
            "task_history_inbox_paused",
            "1 while the consumer takes no deliveries because the messages in hand are over"
            " TASK_HISTORY_INBOX_HIGH_BYTES, until they are under TASK_HISTORY_INBOX_LOW_BYTES",
            registry=r,
        )
        self.queue_messages = Gauge(
            "task_history_queue_messages",
            "Messages ready in the events queue, as the last readiness probe (every 2 s) saw"
            " them; the same queue for every replica: max() across them, not sum()",
            registry=r,
        )
        self.inbox_bytes = Gauge(
            "task_history_inbox_bytes",
            "Bytes of message bodies the consumer holds: waiting in its inbox or being written",
            registry=r,
        )
        self.asynchronous_standbys = Gauge(
            "task_history_database_asynchronous_standbys",
            "Standbys the database streams to while none is synchronous (read at start-up):"
            " above 0, a failover can lose events already acknowledged",
            registry=r,
        )
        # Every series exists from the start, at zero: a dashboard's rate() needs the zero.
        for code in KNOWN_CODES:
            self.dead_lettered.labels(code=code)
        for outcome in ("done", "locked", "scheduled", "failed"):
            self.expiry_runs.labels(outcome=outcome)
        for kind in ("unsigned", "out_of_range", "too_deep"):
            self.ignored_values.labels(kind=kind)

    def observe_lag(self, created: list[datetime], *, now: datetime) -> None:
        """Record the lag of rows just committed, from their `created_at`."""
        for created_at in created:
            self.lag_seconds.observe(max(0.0, (now - created_at).total_seconds()))

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class DeadLetterCensus:
    """The dead letters the database holds, by code, and how many were replayed and purged.

    Read from the database, so the same for every process that reads it: `serve` exposes
    them, not the consumers, whose sum across replicas would count each letter once per
    replica.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        """Expose the census in `registry`, from the first `show()` on."""
        self._counts: dict[str, int] = dict.fromkeys(KNOWN_CODES, 0)
        self._replayed = 0
        self._purged = 0
        # Nothing is exposed before the database was read: zeros would read as "none", and
        # the first real totals as a burst.
        self._read = False
        registry.register(self)

    def show(self, counts: Mapping[str, int], *, replayed: int, purged: int) -> None:
        """Take what the database holds now."""
        self._counts = dict.fromkeys(KNOWN_CODES, 0)
        for code, count in counts.items():
            self._counts[metric_code(code)] += count
        self._replayed, self._purged = replayed, purged
        self._read = True

    def collect(self) -> Iterator[Metric]:
        """The three families, as a scrape reads them; none until the database was read."""
        return self.describe() if self._read else iter(())

    def describe(self) -> Iterator[Metric]:
        """The three families with the last values read (their names, for the registry)."""
        letters = GaugeMetricFamily(
            "task_history_dead_letters",
            "Dead letters in the database now, by x-error code (other: a code of another tool)",
            labels=["code"],
        )
        for code, count in self._counts.items():
            letters.add_metric([code], count)
        yield letters
        yield CounterMetricFamily(
            "task_history_dead_letters_replayed",
            "Dead letters sent back by `task-history dlq replay` or the API, ever",
            value=self._replayed,
        )
        yield CounterMetricFamily(
            "task_history_dead_letters_purged",
            "Dead letters deleted by `task-history dlq purge` or the API, ever",
            value=self._purged,
        )


class HealthServer:
    """Serves /metrics, /healthz (the process answers) and /readyz (it is consuming).

    On the HTTP stack `serve` runs on (consumer.http), with the same answers: `{"status":
    "ok"}`, `{"status": "ready"}`, or 503 with `{"status": "not ready: REASON"}`.
    """

    def __init__(  # keyword-only, one per thing it serves
        self,
        metrics: Metrics,
        *,
        ready: Readiness,
        host: str,
        port: int,
    ) -> None:
        """Prepare the server; `start()` listens on host:port (port 0 picks a free one)."""
        self._metrics = metrics
        self._ready = ready
        self._host = host
        self._port = port
        self._server: QuietServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self._listener: socket.socket | None = None
        self.port = port

    async def start(self) -> None:
        """Listen; a port already taken is a configuration error, raised at once."""
        try:
            listener = bind(self._host, self._port)
        except TaskHistoryError as exc:
            raise ConfigurationError(
                f"can't serve metrics: {exc}; set TASK_HISTORY_METRICS_PORT to a free port, or"
                " 0 for none"
            ) from None
        app = Starlette(
            routes=[
                Route("/metrics", self._serve_metrics),
                Route("/healthz", self._serve_health),
                Route("/readyz", self._serve_readiness),
            ]
        )
        config = uvicorn.Config(
            app,
            log_config=None,  # the project's logging takes uvicorn's records
            access_log=False,
            lifespan="off",
            server_header=False,
            # Its handlers answer at once: a stop waits 2 s at most for one under way.
            timeout_graceful_shutdown=2,
        )
        server = QuietServer(config)
        self._serving = asyncio.create_task(server.serve(sockets=[listener]))
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait([self._serving, listening], return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if self._serving.done():
            listener.close()
            self._serving.result()  # what stopped it
            raise ConfigurationError(f"can't serve metrics on {self._host}:{self._port}")
        self._server, self._listener = server, listener
        # The port actually bound (port 0 picks a free one).
        self.port = listener.getsockname()[1]
        log.info("serving metrics and health", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None and self._serving is not None:
            server, serving, self._server, self._serving = self._server, self._serving, None, None
            server.stop()
            await serving
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _serve_metrics(self, _request: Request) -> Response:
        return Response(self._metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def _serve_health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _serve_readiness(self, _request: Request) -> Response:
        reason = await self._ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": f"not ready: {reason}"}, status_code=503)
