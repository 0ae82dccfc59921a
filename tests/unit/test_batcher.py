"""Batching decisions without I/O: when the inbox hands out a batch, how long to back off."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TypeVar

import pytest

from consumer.batcher import QUIET_TURNS, Inbox
from consumer.retry import backoff

T = TypeVar("T")

# A short max_wait for batches that must stop growing, and a long one for batches that must not.
SHORT_WAIT = 0.05
LONG_WAIT = 60.0
# A generous bound for "promptly": far below LONG_WAIT, far above any scheduling noise.
PROMPTLY = 1.0
# Event-loop turns a take may use to see that nothing more is coming, and a few to spare.
FEW_TURNS = QUIET_TURNS + 2


def loop_time() -> float:
    """The running loop's clock, the one the inbox measures with."""
    return asyncio.get_running_loop().time()


async def turns(count: int) -> None:
    """Let `count` event-loop turns pass."""
    for _ in range(count):
        await asyncio.sleep(0)


async def settle() -> None:
    """Let every ready task run a few steps, without letting any timer's time pass on purpose."""
    await turns(10)


def holding(items: Iterable[T], *, max_size: int, max_wait: float = LONG_WAIT) -> Inbox[T]:
    """An inbox with `items` already put, in order."""
    inbox: Inbox[T] = Inbox(max_size=max_size, max_wait=max_wait)
    for item in items:
        inbox.put(item)
    return inbox


async def promptly(batch: Awaitable[list[T]]) -> list[T]:
    """The batch, failing the test if it doesn't come promptly."""
    async with asyncio.timeout(PROMPTLY):
        return await batch


async def take_promptly(inbox: Inbox[T]) -> list[T]:
    """The next batch, failing the test if it doesn't come promptly."""
    return await promptly(inbox.take())


async def waiting_take(inbox: Inbox[T]) -> asyncio.Task[list[T]]:
    """A take, started and given every chance to run, that is still waiting."""
    task = asyncio.create_task(inbox.take())
    await settle()
    assert not task.done()
    return task


async def feed(inbox: Inbox[int], items: Iterable[int], *, every: int = 1) -> None:
    """Put `items` one at a time, `every` event-loop turns apart, as deliveries arrive."""
    for item in items:
        inbox.put(item)
        await turns(every)


@contextlib.asynccontextmanager
async def feeding(
    inbox: Inbox[int], items: Iterable[int], *, every: int = 1
) -> AsyncIterator[asyncio.Task[None]]:
    """`feed` running in a task of its own for the block; cancelled on the way out."""
    task = asyncio.create_task(feed(inbox, items, every=every))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TurnCounter:
    """Counts the event loop's turns while it runs."""

    def __init__(self) -> None:
        """Not yet counting."""
        self.count = 0

    async def run(self) -> None:
        """Count one a turn, until cancelled."""
        while True:
            await asyncio.sleep(0)
            self.count += 1


@contextlib.asynccontextmanager
async def counting_turns() -> AsyncIterator[TurnCounter]:
    """A TurnCounter counting for the block."""
    counter = TurnCounter()
    task = asyncio.create_task(counter.run())
    try:
        yield counter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TestConstruction:
    """An inbox needs room for at least one item and starts empty."""

    @pytest.mark.parametrize("max_size", [0, -1])
    def test_max_size_below_one(self, max_size: int) -> None:
        """A max_size under 1 is refused."""
        with pytest.raises(ValueError, match=r"^max_size must be at least 1$"):
            Inbox[int](max_size=max_size, max_wait=SHORT_WAIT)

    async def test_starts_empty(self) -> None:
        """A new inbox holds nothing and hands out an empty batch on demand."""
        inbox = Inbox[int](max_size=3, max_wait=SHORT_WAIT)
        assert len(inbox) == 0
        assert inbox.take_nowait() == []

    async def test_len_counts_waiting_items(self) -> None:
        """The length is the number of items put and not yet taken."""
        inbox = holding(range(5), max_size=2, max_wait=SHORT_WAIT)
        assert len(inbox) == 5
        inbox.take_nowait()
        assert len(inbox) == 3


class TestIdle:
    """With nothing more arriving, what is in hand goes out at once: no clock is waited out."""

    async def test_lone_item_goes_at_once(self) -> None:
        """A lone item is handed out within a few event-loop turns, whatever max_wait is."""
        inbox = holding(["a"], max_size=10)
        async with counting_turns() as counter:
            assert await take_promptly(inbox) == ["a"]
        assert counter.count <= FEW_TURNS
        assert len(inbox) == 0

    async def test_waiting_take_wakes_on_first_item(self) -> None:
        """A take waiting on an empty inbox returns the first item soon after it arrives."""
        inbox = Inbox[str](max_size=10, max_wait=LONG_WAIT)
        task = await waiting_take(inbox)
        async with counting_turns() as counter:
            inbox.put("first")
            assert await promptly(task) == ["first"]
        assert counter.count <= FEW_TURNS + 1

    async def test_what_arrived_during_a_write_goes_at_once(self) -> None:
        """Items that piled up while the writer was busy are handed out together, at once."""
        inbox = holding(range(5), max_size=10)
        async with counting_turns() as counter:
            assert await take_promptly(inbox) == [0, 1, 2, 3, 4]
        assert counter.count <= FEW_TURNS

    async def test_one_batch_per_lull(self) -> None:
        """Items a lull apart go out in separate batches, each as soon as it is in hand."""
        inbox = Inbox[int](max_size=10, max_wait=LONG_WAIT)
        task = await waiting_take(inbox)
        inbox.put(1)
        assert await promptly(task) == [1]
        task = await waiting_take(inbox)
        inbox.put(2)
        assert await promptly(task) == [2]


class TestGrowth:
    """While items keep arriving, the batch keeps growing, up to the caps."""

    async def test_grows_while_arrivals_continue(self) -> None:
        """Items arriving on turn after turn join the batch that started with the first."""
        inbox = holding([0], max_size=100)
        async with feeding(inbox, range(1, 30)):
            assert await take_promptly(inbox) == list(range(30))

    async def test_short_gaps_do_not_end_it(self) -> None:
        """Arrivals fewer than QUIET_TURNS turns apart still join the batch."""
        inbox = holding([0], max_size=100)
        async with feeding(inbox, range(1, 10), every=QUIET_TURNS - 1):
            assert await take_promptly(inbox) == list(range(10))

    async def test_a_lull_ends_it(self) -> None:
        """An item arriving after a lull of QUIET_TURNS turns waits for the next batch."""
        inbox = holding([0], max_size=100)
        first = asyncio.create_task(inbox.take())
        await turns(QUIET_TURNS + 5)
        inbox.put(1)
        assert await promptly(first) == [0]
        assert await take_promptly(inbox) == [1]

    async def test_arrivals_after_the_take_wait_for_the_next(self) -> None:
        """What arrives while a batch is written is not lost: it makes the next batch."""
        inbox = holding([0, 1], max_size=100)
        assert await take_promptly(inbox) == [0, 1]
        inbox.put(2)
        inbox.put(3)
        assert await take_promptly(inbox) == [2, 3]


class TestCaps:
    """A batch stops growing at max_size items, or max_wait after its first item arrived."""

    async def test_full_batch_at_once(self) -> None:
        """Items already filling a batch are returned without yielding, arrivals or not."""
        inbox = holding(range(3), max_size=3)
        async with feeding(inbox, itertools.count(3)):
            assert await inbox.take() == [0, 1, 2]

    async def test_size_cap_while_arrivals_continue(self) -> None:
        """A batch growing under endless arrivals goes out as soon as it holds max_size."""
        inbox = holding([0], max_size=10)
        async with feeding(inbox, itertools.count(1)):
            assert await take_promptly(inbox) == list(range(10))

    async def test_time_cap_while_arrivals_continue(self) -> None:
        """Under endless arrivals below max_size, the batch goes after about max_wait."""
        inbox = Inbox[int](max_size=10**9, max_wait=SHORT_WAIT)
        start = loop_time()
        inbox.put(0)
        async with feeding(inbox, itertools.count(1)):
            batch = await take_promptly(inbox)
        elapsed = loop_time() - start
        assert elapsed >= SHORT_WAIT * 0.8
        assert elapsed < PROMPTLY
        assert len(batch) > 1
        assert batch == list(range(len(batch)))

    async def test_time_cap_counts_from_the_first_item(self) -> None:
        """A first item that has already waited max_wait goes out without any growing."""
        inbox = holding([0], max_size=100, max_wait=SHORT_WAIT)
        await asyncio.sleep(SHORT_WAIT * 2)
        async with feeding(inbox, itertools.count(1)):
            assert await inbox.take() == [0]

    async def test_zero_wait_never_grows(self) -> None:
        """With max_wait 0 a batch is exactly what is in hand when the writer asks."""
        inbox = holding([0, 1], max_size=100, max_wait=0)
        async with feeding(inbox, itertools.count(2)):
            assert await inbox.take() == [0, 1]

    async def test_items_beyond_max_size_stay(self) -> None:
        """Items past max_size are left in the inbox for the next take."""
        inbox = holding(range(5), max_size=2)
        assert await take_promptly(inbox) == [0, 1]
        assert len(inbox) == 3
        assert await take_promptly(inbox) == [2, 3]
        assert len(inbox) == 1
        assert inbox.take_nowait() == [4]
        assert len(inbox) == 0

    async def test_max_size_one(self) -> None:
        """With max_size 1 every item is a batch of its own."""
        inbox = holding([7, 8], max_size=1)
        assert await take_promptly(inbox) == [7]
        assert await take_promptly(inbox) == [8]

    async def test_after_a_full_batch_the_next_fills_first(self) -> None:
        """Under load (the last batch went out full), the next waits to fill, within max_wait."""
        inbox = holding(range(3), max_size=2, max_wait=LONG_WAIT)
        assert await take_promptly(inbox) == [0, 1]

        async def one_more() -> None:
            await asyncio.sleep(0.01)
            inbox.put(3)

        arriving = asyncio.create_task(one_more())
        assert await inbox.take() == [2, 3]
        await arriving

    async def test_after_a_partial_batch_the_next_goes_at_once(self) -> None:
        """Out of load (the last batch was not full), what is in hand goes without waiting."""
        inbox = holding(range(3), max_size=2, max_wait=0.02)
        assert await take_promptly(inbox) == [0, 1]
        assert await inbox.take() == [2]  # waited max_wait for a full batch: none came
        inbox.put(4)
        async with counting_turns() as counter:
            assert await take_promptly(inbox) == [4]
        assert counter.count <= FEW_TURNS


class TestOrder:
    """Items go out in the order they were put."""

    async def test_order_within_a_batch(self) -> None:
        """A batch lists its items in arrival order."""
        items = ["delta", "alpha", "charlie", "bravo"]
        inbox = holding(items, max_size=4)
        assert await take_promptly(inbox) == items

    async def test_order_across_batches(self) -> None:
        """Consecutive batches continue the arrival order without gaps or repeats."""
        items = random.sample(range(1000), 10)
        inbox = holding(items, max_size=3)
        batches = [await take_promptly(inbox) for _ in range(3)]
        batches.append(inbox.take_nowait())
        assert [len(batch) for batch in batches] == [3, 3, 3, 1]
        assert [item for batch in batches for item in batch] == items


class TestInterrupt:
    """After interrupt(), take returns at once with whatever is there."""

    async def test_waiting_take_on_empty_inbox(self) -> None:
        """A take waiting for a first item returns an empty batch when interrupted."""
        inbox = Inbox[int](max_size=3, max_wait=LONG_WAIT)
        task = await waiting_take(inbox)
        inbox.interrupt()
        assert await promptly(task) == []

    async def test_growing_batch(self) -> None:
        """A batch growing under endless arrivals goes out as soon as the inbox is interrupted."""
        inbox = holding([0], max_size=10**9)
        async with feeding(inbox, itertools.count(1)):
            task = asyncio.create_task(inbox.take())
            await settle()
            assert not task.done()
            inbox.interrupt()
            batch = await promptly(task)
        assert len(batch) > 1
        assert batch == list(range(len(batch)))

    async def test_interrupt_before_take(self) -> None:
        """A take after interrupt() on an empty inbox returns an empty batch at once."""
        inbox = Inbox[int](max_size=3, max_wait=LONG_WAIT)
        inbox.interrupt()
        assert await take_promptly(inbox) == []

    async def test_no_growing_once_interrupted(self) -> None:
        """An interrupted inbox hands out what it holds without waiting for more."""
        inbox = holding([0, 1], max_size=100)
        inbox.interrupt()
        async with feeding(inbox, itertools.count(2)):
            assert await inbox.take() == [0, 1]

    async def test_interrupt_lasts(self) -> None:
        """Every later take returns at once too, with new items or with nothing."""
        inbox = Inbox[str](max_size=3, max_wait=LONG_WAIT)
        inbox.interrupt()
        assert await take_promptly(inbox) == []
        inbox.put("late")
        assert await take_promptly(inbox) == ["late"]
        assert await take_promptly(inbox) == []

    async def test_interrupt_keeps_max_size(self) -> None:
        """An interrupted inbox still hands out at most max_size items per batch, in order."""
        inbox = holding(range(3), max_size=2)
        inbox.interrupt()
        assert await take_promptly(inbox) == [0, 1]
        assert await take_promptly(inbox) == [2]
        assert await take_promptly(inbox) == []


class TestTakeNowait:
    """take_nowait hands out the batch as it stands, without waiting."""

    async def test_empty(self) -> None:
        """An empty inbox gives an empty batch."""
        assert Inbox[int](max_size=2, max_wait=LONG_WAIT).take_nowait() == []

    async def test_partial_batch(self) -> None:
        """A partial batch is handed out without waiting for more."""
        inbox = holding([1, 2], max_size=5)
        assert inbox.take_nowait() == [1, 2]
        assert len(inbox) == 0
        assert inbox.take_nowait() == []

    async def test_at_most_max_size(self) -> None:
        """At most max_size items are handed out; the rest stay, in order."""
        inbox = holding(range(5), max_size=2)
        assert inbox.take_nowait() == [0, 1]
        assert inbox.take_nowait() == [2, 3]
        assert inbox.take_nowait() == [4]
        assert inbox.take_nowait() == []


def lowest(low: float, _high: float) -> float:
    """A stand-in for random.uniform that always draws the lower bound."""
    return low


def highest(_low: float, high: float) -> float:
    """A stand-in for random.uniform that always draws the upper bound."""
    return high


class TestBackoff:
    """Retry delays double from the base, stop at the cap, and are jittered."""

    @pytest.mark.parametrize(
        ("attempt", "delay"),
        [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (6, 6.4), (8, 25.6), (9, 30.0), (50, 30.0)],
    )
    def test_within_half_and_full_delay(self, attempt: int, delay: float) -> None:
        """Each delay lies between half and all of base doubled per attempt, capped."""
        for _ in range(200):
            assert delay / 2 <= backoff(attempt) <= delay

    def test_grows(self) -> None:
        """Below the cap, a later attempt never waits less than an earlier one."""
        for _ in range(50):
            delays = [backoff(attempt) for attempt in range(1, 9)]
            assert delays == sorted(delays)
        assert backoff(8) > backoff(1)

    def test_doubles_without_jitter(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the jitter at its top the delay doubles per attempt up to the cap."""
        monkeypatch.setattr(random, "uniform", highest)
        delays = [backoff(attempt) for attempt in range(1, 11)]
        expected = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
        assert delays == pytest.approx(expected)

    def test_jitter_lower_bound(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the jitter at its bottom the delay is half the full delay."""
        monkeypatch.setattr(random, "uniform", lowest)
        assert backoff(1) == pytest.approx(0.1)
        assert backoff(4) == pytest.approx(0.8)
        assert backoff(100) == pytest.approx(15.0)

    @pytest.mark.parametrize("attempt", [9, 20, 64, 1_000, 10**9])
    def test_capped(self, attempt: int) -> None:
        """Any attempt past the cap waits between half the cap and the cap, without overflow."""
        assert 15.0 <= backoff(attempt) <= 30.0

    def test_custom_base_and_cap(self) -> None:
        """The base and the cap are parameters."""
        assert 0.5 <= backoff(1, base=1.0, cap=5.0) <= 1.0
        assert 1.0 <= backoff(2, base=1.0, cap=5.0) <= 2.0
        assert 2.5 <= backoff(10, base=1.0, cap=5.0) <= 5.0

    def test_jittered(self) -> None:
        """Repeated delays for one attempt differ, so replicas spread out."""
        assert len({backoff(5) for _ in range(100)}) > 1


class TestBytes:
    """Memory counted in bytes: held until released, full above the high mark, a batch capped."""

    @staticmethod
    def inbox(**limits: int) -> Inbox[bytes]:
        """An inbox of byte strings sized by their length."""
        return Inbox(max_size=100, max_wait=SHORT_WAIT, size_of=len, **limits)

    async def test_held_until_released(self) -> None:
        """Bytes are held from put to release, whether in the inbox or handed out."""
        inbox = self.inbox(high_bytes=100, low_bytes=10)
        inbox.put(b"x" * 40)
        inbox.put(b"y" * 30)
        assert inbox.held_bytes == 70
        batch = await inbox.take()
        assert inbox.held_bytes == 70  # being written: still in memory
        inbox.release(batch)
        assert inbox.held_bytes == 0

    async def test_full_above_the_high_mark_roomy_below_the_low(self) -> None:
        """`full` at the high mark and after; `roomy` only once under the low mark again."""
        inbox = self.inbox(high_bytes=100, low_bytes=10)
        inbox.put(b"x" * 60)
        assert not inbox.full
        inbox.put(b"y" * 50)
        assert inbox.full
        assert not inbox.roomy
        first = inbox.take_nowait()
        inbox.release(first[:1])
        assert not inbox.full
        assert not inbox.roomy  # between the marks: stay as it is
        inbox.release(first[1:])
        assert inbox.roomy

    async def test_a_batch_holds_at_most_its_bytes(self) -> None:
        """Past max_batch_bytes the batch ends; one item larger than that still goes alone."""
        inbox = self.inbox(max_batch_bytes=100)
        for size in (60, 30, 20, 500, 5):
            inbox.put(b"z" * size)
        assert [len(item) for item in inbox.take_nowait()] == [60, 30]
        assert [len(item) for item in inbox.take_nowait()] == [20]
        assert [len(item) for item in inbox.take_nowait()] == [500]
        assert [len(item) for item in inbox.take_nowait()] == [5]

    async def test_growth_stops_at_the_byte_cap(self) -> None:
        """A take does not wait for more once what waits fills a batch by bytes."""
        inbox = Inbox(max_size=100, max_wait=LONG_WAIT, size_of=len, max_batch_bytes=100)
        inbox.put(b"a" * 150)
        started = loop_time()
        assert [len(item) for item in await inbox.take()] == [150]
        assert loop_time() - started < PROMPTLY

    def test_marks_in_order(self) -> None:
        """The low mark must be below the high one."""
        with pytest.raises(ValueError, match="below"):
            Inbox[bytes](max_size=1, max_wait=0, high_bytes=10, low_bytes=10)
