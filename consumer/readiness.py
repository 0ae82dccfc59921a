"""Readiness that tells the truth: judged from what the consumer sees, every few seconds.

Being subscribed is not enough. A consumer whose broker node was cut off from the others keeps
its subscription and gets nothing; one whose connection froze keeps it too, until heartbeats
time out. So the watch also asks the broker how many messages wait in the queue (a probe that
must answer within seconds), and counts a queue that holds messages while none was delivered
for a while as a stall. Each change is logged once, one line each way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import Gauge

log = structlog.get_logger("consumer")

# Seconds between two checks, and the most a probe of the broker or the database may take.
CHECK_INTERVAL = 2.0
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Signs:
    """What the consumer sees at one check; the verdict follows from it alone."""

    stopping: bool = False
    consuming: bool = True
    # Why the broker or the database did not answer its probe; None when it did.
    broker_problem: str | None = None
    database_problem: str | None = None
    # Messages ready in the queue (None: not asked), and seconds since the last delivery or
    # write, whichever came last.
    waiting: int | None = None
    idle_seconds: float = 0.0
    # Why the database refuses the writes (a revoked grant), while it does.
    refusal: str | None = None


def judge(signs: Signs, *, stall_after: float) -> str | None:
    """None if ready; else why not, in a few words that stay the same while the cause does."""
    stalled = bool(signs.waiting) and signs.idle_seconds >= stall_after
    reasons = (
        "stopping" if signs.stopping else None,
        None if signs.consuming else "not consuming from the broker",
        signs.broker_problem,
        signs.database_problem,
        None if signs.refusal is None else f"the database refuses the writes: {signs.refusal}",
        f"messages wait in the queue, and none was delivered for {stall_after:g} s"
        if stalled
        else None,
    )
    return next((reason for reason in reasons if reason is not None), None)


class ReadinessWatch:
    """Judges readiness from `observe()` on demand and every CHECK_INTERVAL; logs each change."""

    def __init__(
        self,
        observe: Callable[[], Awaitable[Signs]],
        *,
        stall_after: float,
        gauge: Gauge,
    ) -> None:
        """Watch what `observe` reports; `gauge` is set to 1 while ready, else 0."""
        self._observe = observe
        self._stall_after = stall_after
        self._gauge = gauge
        self._gauge.set(0)
        # The last verdict, what /readyz answers; "starting" until the first check.
        self.verdict: str | None = "starting"
        self._ever_ready = False

    async def check(self) -> str | None:
        """Observe and judge now; log if the verdict changed; return it."""
        signs = await self._observe()
        verdict = judge(signs, stall_after=self._stall_after)
        if verdict != self.verdict:
            self._announce(verdict, signs)
        self.verdict = verdict
        self._ever_ready |= verdict is None
        self._gauge.set(1 if verdict is None else 0)
        return verdict

    def _announce(self, verdict: str | None, signs: Signs) -> None:
        """One line for each change, once the consumer has been ready (start-up logs its own)."""
        if not self._ever_ready or verdict == "stopping":
            return
        if verdict is None:
            log.info("ready again")
            return
        log.warning(
            "not ready",
            reason=verdict,
            waiting=signs.waiting,
            idle_seconds=round(signs.idle_seconds, 1),
        )

    async def run(self) -> None:
        """Check every CHECK_INTERVAL seconds until cancelled, whatever one check raises."""
        while True:
            try:
                await self.check()
            except Exception:  # a bug in one check must not freeze /readyz at its last answer
                log.exception("readiness check failed")
            await asyncio.sleep(CHECK_INTERVAL)
