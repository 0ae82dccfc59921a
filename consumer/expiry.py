"""The consumers' expiry loop: delete expired entries every interval, unless pg_cron does."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import NamedTuple, Protocol

import structlog

from consumer.errors import TaskHistoryError
from consumer.metrics import Metrics

log = structlog.get_logger("consumer")

# How long a registered pg_cron expiry job may go without running before the consumers take
# expiry back: longer than any sensible schedule (daily at most), short of a real problem.
CRON_SILENCE = timedelta(hours=25)


class Expired(NamedTuple):
    """What one expiry run deleted: entries, and dead letters past their own retention."""

    entries: int
    dead_letters: int


class ExpiryBackend(Protocol):
    """What the expiry loop asks of the database."""

    async def expiry_job(self) -> str | None:
        """The pg_cron job registered to run expiry, if any."""

    async def expiry_job_silent(self, *, longer_than: timedelta) -> bool:
        """Whether that job has not run for `longer_than`."""

    async def expire_exclusively(self, *, batch_size: int) -> Expired | None:
        """Delete expired entries; None if another replica is at it."""

    async def forget_received(self, *, batch_size: int) -> int:
        """Forget the received ids older than the redelivery window; how many."""


class ExpiryLoop:
    """Runs expiry every interval, unless pg_cron does; one replica at a time."""

    def __init__(
        self, store: ExpiryBackend, *, interval: float, batch_size: int, metrics: Metrics
    ) -> None:
        """Expire through `store` every `interval` seconds, `batch_size` rows a transaction."""
        self._store = store
        self._interval = interval
        self._batch_size = batch_size
        self._metrics = metrics
        self._scheduled: str | None = None

    async def run(self) -> None:
        """Expire every interval until cancelled; a failed run is logged and tried again."""
        if self._interval <= 0:
            return
        while True:
            try:
                await self.run_once()
            except TaskHistoryError as exc:
                self._metrics.expiry_runs.labels(outcome="failed").inc()
                log.warning("expiry failed; trying again next interval", error=str(exc))
            except Exception:
                # A bug must not end expiry for good, silently, or come back at shutdown as
                # the process's exit cause: it is logged whole, and the loop goes on.
                self._metrics.expiry_runs.labels(outcome="failed").inc()
                log.exception("expiry failed unexpectedly; trying again next interval")
            await asyncio.sleep(self._interval)

    async def run_once(self) -> None:
        """One interval's work: forget old received ids; stand down for pg_cron, or expire."""
        # The consumers' own bookkeeping, not expiry: done here whoever expires the entries.
        forgotten = await self._store.forget_received(batch_size=self._batch_size)
        if forgotten:
            log.debug("forgot received ids past the redelivery window", forgotten=forgotten)
        # Asked every interval: `task-history schedule` may be run, or undone, any time.
        scheduled = await self._store.expiry_job()
        if scheduled is not None and await self._store.expiry_job_silent(longer_than=CRON_SILENCE):
            # A broken pg_cron (preload removed, database restored elsewhere) must not stop
            # expiry for good: past a day of silence, expire here again.
            log.warning("pg_cron job has not run for a day; expiring here", job=scheduled)
            scheduled = None
        if scheduled != self._scheduled:
            self._scheduled = scheduled
            if scheduled is None:
                log.info("expiry is this consumer's again: no pg_cron job is registered")
            else:
                log.info("expiry left to pg_cron", job=scheduled)
        if scheduled is not None:
            self._metrics.expiry_runs.labels(outcome="scheduled").inc()
            return
        deleted = await self._store.expire_exclusively(batch_size=self._batch_size)
        if deleted is None:
            self._metrics.expiry_runs.labels(outcome="locked").inc()
            log.debug("expiry skipped: another replica is running it")
        else:
            self._metrics.expiry_runs.labels(outcome="done").inc()
            self._metrics.expired.inc(deleted.entries)
            log.info("expired", entries=deleted.entries, dead_letters=deleted.dead_letters)
