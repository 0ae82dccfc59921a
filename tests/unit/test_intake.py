"""The subscription's keeping: changed only when nothing is on its way, resumed in the end."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from consumer.flow import PrefetchBySize
from consumer.intake import QUIET_BACKOFF, Intake
from consumer.metrics import Metrics
from consumer.shutdown import Shutdown

MIB = 1 << 20


@dataclass
class Subscription:
    """A subscription that says whether deliveries are on their way, and records changes."""

    quiet: bool = True
    paused: bool = False
    changes: list[str] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    async def pause(self) -> None:
        """Pause."""
        self.paused = True
        self.changes.append("pause")

    async def resume(self) -> None:
        """Resume."""
        self.paused = False
        self.changes.append("resume")

    async def set_prefetch(self, count: int) -> None:
        """Change the prefetch."""
        self.changes.append(f"prefetch {count}")

    async def until_quiet(self, *, within: float) -> bool:
        """Whether nothing is on its way; the wait asked for is recorded."""
        self.waits.append(within)
        return self.quiet


@dataclass
class Holding:
    """Bytes in hand, against marks of 100 and 10."""

    held_bytes: int = 0

    @property
    def full(self) -> bool:
        """Over 100."""
        return self.held_bytes >= 100

    @property
    def roomy(self) -> bool:
        """Under 10."""
        return self.held_bytes <= 10


def intake(subscription: Subscription, holding: Holding) -> tuple[Intake, PrefetchBySize]:
    """An intake on these fakes, with a 64 MiB prefetch budget of 1,000 at most."""
    prefetch = PrefetchBySize(high_bytes=64 * MIB, most=1000, assumed_bytes=MIB)
    keeper = Intake(
        subscription=subscription,
        inbox=holding,
        prefetch=prefetch,
        metrics=Metrics(),
        shutdown=Shutdown(),
    )
    return keeper, prefetch


class TestBetweenBatches:
    """Pauses and prefetch changes wait for a moment when nothing is on its way."""

    async def test_over_the_high_mark_and_quiet_it_pauses(self) -> None:
        """Full, and all the prefetch allows is in hand: paused."""
        subscription, holding = Subscription(), Holding(held_bytes=150)
        keeper, _ = intake(subscription, holding)
        await keeper.between_batches()
        assert subscription.changes == ["pause"]

    async def test_not_while_deliveries_are_on_their_way(self) -> None:
        """Full, but deliveries in transit: nothing changed (a cancel would send them back)."""
        subscription, holding = Subscription(quiet=False), Holding(held_bytes=150)
        keeper, _ = intake(subscription, holding)
        await keeper.between_batches()
        assert subscription.changes == []

    async def test_a_queue_running_dry_is_not_waited_on_each_batch(self) -> None:
        """After a wait that found deliveries still coming, the next few do not wait."""
        subscription, holding = Subscription(quiet=False), Holding(held_bytes=150)
        keeper, _ = intake(subscription, holding)
        for _ in range(QUIET_BACKOFF + 2):
            await keeper.between_batches()
        assert subscription.waits[0] > 0
        assert subscription.waits[1 : QUIET_BACKOFF + 1] == [0.0] * QUIET_BACKOFF
        assert subscription.waits[QUIET_BACKOFF + 1] > 0

    async def test_nothing_asked_nothing_waited(self) -> None:
        """Under the mark and the prefetch as wanted: not even a wait."""
        subscription, holding = Subscription(), Holding(held_bytes=5)
        keeper, _ = intake(subscription, holding)
        await keeper.between_batches()
        assert (subscription.changes, subscription.waits) == ([], [])

    async def test_the_prefetch_is_fitted_when_quiet(self) -> None:
        """Large messages seen: the prefetch narrowed to the budget over the largest."""
        subscription, holding = Subscription(), Holding(held_bytes=5)
        keeper, prefetch = intake(subscription, holding)
        prefetch.observe(30 * MIB)
        await keeper.between_batches()
        assert subscription.changes == ["prefetch 2"]
        assert prefetch.current == 2


class TestResuming:
    """Once under the low mark it resumes, in the background, with the prefetch fitted."""

    async def test_resumed_under_the_low_mark(self) -> None:
        """Paused, then roomy: the prefetch is fitted first, then deliveries resume."""
        subscription, holding = Subscription(paused=True), Holding(held_bytes=50)
        keeper, prefetch = intake(subscription, holding)
        prefetch.observe(30 * MIB)
        keeper.after_batch()
        await asyncio.sleep(0)
        assert subscription.changes == []  # between the marks: stays paused
        holding.held_bytes = 5
        keeper.after_batch()
        for _ in range(5):
            await asyncio.sleep(0)
        assert subscription.changes == ["prefetch 2", "resume"]
        await keeper.close()
