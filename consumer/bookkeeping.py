"""A batch's outcome counted and told: the metrics, the batches' log lines, warnings once each.

No decisions here, and no I/O but the log: the pipeline decides (consumer.triage), this keeps
the count of what it decided.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from uuid import UUID

import structlog

from consumer.entries import NewEntry
from consumer.incoming import Incoming
from consumer.metrics import Metrics, metric_code
from consumer.topology import RoutingKeyCheck
from consumer.triage import Delivery, Outcome
from consumer.unknown_tasks import CREATE_MISSING_TASKS, create_task_hint

log = structlog.get_logger("consumer")

# How many tasks the consumer remembers having logged the unknown-task hint for, and how many
# distinct reasons for refusing rows, or kinds of ignored values, it warns of.
HINTED_TASKS = 10_000
WARNED_REASONS = 100


# The batch line's fields that a summary adds up; `ms` is summed too, and its largest kept.
SUMMED = (
    "size",
    "stored",
    "duplicates",
    "dead_lettered",
    "waiting_for_task",
    "refused_waiting",
    "unacked",
    "ms",
)


class BatchSummary:
    """Batch lines added up into one line per interval: pure, the caller tells the time."""

    def __init__(self, interval: float) -> None:
        """Tell a summary at most once per `interval` seconds."""
        self.interval = interval
        self.batches = 0
        self._sums: Counter[str] = Counter()
        self._slowest = 0.0
        self._opened = 0.0
        self._told = float("-inf")

    def add(self, line: dict[str, float], *, now: float) -> None:
        """Count one batch's line."""
        if not self.batches:
            self._opened = now
        self.batches += 1
        self._sums.update({key: line[key] for key in SUMMED})
        self._slowest = max(self._slowest, line["ms"])

    def due_in(self, now: float) -> float:
        """Seconds until the summary may be told (0: now)."""
        return max(0.0, self._told + self.interval - now)

    def take(self, *, now: float) -> dict[str, float]:
        """The summary line's fields since the last one; counting starts again."""
        ms = self._sums.pop("ms", 0)
        line: dict[str, float] = {"batches": self.batches, **self._sums}
        line |= {"ms_total": round(ms, 1), "ms_max": self._slowest}
        line["seconds"] = round(now - self._opened, 1)
        self.batches, self._sums, self._slowest, self._told = 0, Counter(), 0.0, now
        return line


class Bookkeeping:
    """The metrics and the log lines of the batches one pipeline settles."""

    def __init__(self, metrics: Metrics, *, log_every: float = 0) -> None:
        """Count into `metrics`; log the batches summed up once per `log_every` s (0: each)."""
        self._metrics = metrics
        self._summary = BatchSummary(log_every)
        self._timer: asyncio.TimerHandle | None = None
        self._routing = RoutingKeyCheck()
        # Tasks whose waiting events were explained in the log: once each, not per message.
        self._hinted: dict[UUID, None] = {}
        self._warned: set[str] = set()

    def hint_unknown_task(self, task_id: UUID, window: float) -> None:
        """Log, once per task, that its events wait for it and how to create it."""
        if task_id in self._hinted:
            return
        if len(self._hinted) >= HINTED_TASKS:
            del self._hinted[next(iter(self._hinted))]  # the oldest: dicts keep their order
        self._hinted[task_id] = None
        log.warning(
            "events wait for a task that doesn't exist",
            task_id=str(task_id),
            waits_seconds=window,
            then="dead-lettered as unknown_task",
            create_it=create_task_hint(task_id),
            or_set=CREATE_MISSING_TASKS,
        )

    def report(self, outcome: Outcome, *, unacked: int, started: float) -> None:
        """Add a batch's outcome, acked just now, to the metrics and the log."""
        metrics = self._metrics
        stored = outcome.stored
        duplicates = len(outcome.valid) - len(stored)
        metrics.batch_size.observe(len(outcome.settled))
        metrics.stored.inc(len(stored))
        metrics.duplicates.inc(duplicates)
        waiting = [p for p in outcome.parked if p.refused_since is None]
        metrics.waiting_for_task.inc(len(waiting))
        metrics.refused_parked.inc(len(outcome.parked) - len(waiting))
        for r in outcome.rejected:
            metrics.dead_lettered.labels(code=metric_code(r.letter.code)).inc()
            log.warning(
                "dead-lettered",
                message_id=r.letter.message_id,
                code=r.letter.code,
                detail=r.letter.detail,
            )
        for delivery in outcome.settled:
            if delivery.message.ignored:
                self._count_ignored(delivery.message)
        self._check_routing_keys(outcome.valid)
        # One lag per stored row: a batch may hold the same event twice (a republish).
        created = {e.id: e.created_at for _, e in outcome.valid if e.id in stored}
        metrics.observe_lag(list(created.values()), now=datetime.now(UTC))
        loop = asyncio.get_running_loop()
        line: dict[str, float] = {
            "size": len(outcome.settled),
            "stored": len(stored),
            "duplicates": duplicates,
            "dead_lettered": len(outcome.rejected),
            "waiting_for_task": len(waiting),
            "refused_waiting": len(outcome.parked) - len(waiting),
            "unacked": unacked,
            "ms": round((loop.time() - started) * 1000, 1),
        }
        if not self._summary.interval:
            log.info("batch", **line)
            return
        # At a trickle a line per batch is a line per event: each goes to debug, and info has
        # one line per interval at most, told as soon as the interval allows.
        log.debug("batch", **line)
        self._summary.add(line, now=loop.time())
        wait = self._summary.due_in(loop.time())
        if not wait:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Log the summary of the batches not told yet, if any (at a stop, say)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._summary.batches:
            now = asyncio.get_running_loop().time()
            log.info("batches", **self._summary.take(now=now))

    def _count_ignored(self, message: Incoming) -> None:
        """Count what a message carried that was not believed; warn once per kind."""
        for ignored in message.ignored:
            self._metrics.ignored_values.labels(kind=ignored.kind).inc()
            self.warn_once(
                f"ignored:{ignored.kind}",
                "values a message carried were ignored (warned once per kind)",
                kind=ignored.kind,
                example=ignored.what,
                message_id=message.message_id,
            )

    def warn_once(self, key: str, event: str, **fields: object) -> None:
        """Log `event` the first time `key` (with its fields) is seen, for a bounded number."""
        seen = key + repr(fields.get("error", ""))
        if seen in self._warned or len(self._warned) >= WARNED_REASONS:
            return
        self._warned.add(seen)
        log.warning(event, **fields)

    def _check_routing_keys(self, valid: list[tuple[Delivery, NewEntry]]) -> None:
        """Count events whose routing key is not history.<context_type>; warn once per key.

        They are stored all the same: the body's context_type is what counts (RoutingKeyCheck).
        """
        mismatches = 0
        for delivery, entry in valid:
            found = self._routing.mismatch(delivery.message.routing_key, entry.context_type)
            if found is None:
                continue
            mismatches += 1
            key, expected = found
            if self._routing.first_sighting(key):
                log.warning(
                    "routing key does not match the event's context_type; stored by its"
                    " context_type (warned once per key)",
                    routing_key=key,
                    expected=expected,
                    message_id=delivery.message.message_id,
                )
        if mismatches:
            self._metrics.routing_key_mismatches.inc(mismatches)
