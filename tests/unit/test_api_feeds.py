"""The API's live feeds: one listener, one read per task per notification, fanned out to all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from starlette.types import Message

from consumer.api import create_app
from consumer.api.feeds import Arrival, Feeds, Ping, Watcher
from consumer.entries import ContextType, HistoryEntry
from consumer.errors import DatabaseUnavailableError
from consumer.pages import Cursor
from consumer.settings import load_settings


class FakeSource:
    """Stored entries per task, and the notifications a real store's listener would send."""

    def __init__(self) -> None:
        """Nothing stored, nobody listening."""
        self.rows: dict[uuid.UUID, list[Arrival]] = {}
        self.reads = 0
        self.listens = 0
        self._seq = 0
        self._on_task: Callable[[uuid.UUID], None] | None = None
        self._on_lost: Callable[[], None] | None = None
        self.answering = True
        self.pings = 0

    async def arrivals(self, task_id: uuid.UUID, *, after_seq: int | None = None) -> list[Arrival]:
        """The task's entries in arrival order (after `after_seq`)."""
        self.reads += 1
        return [
            arrival
            for arrival in self.rows.get(task_id, [])
            if after_seq is None or arrival[1].seq > after_seq
        ]

    @asynccontextmanager
    async def notifications(
        self, on_task: Callable[[uuid.UUID], None], *, on_lost: Callable[[], None]
    ) -> AsyncIterator[Ping]:
        """Listen: `store(..., notify=True)` calls `on_task` until `lose()`."""
        self.listens += 1
        self._on_task, self._on_lost = on_task, on_lost
        self.answering = True  # a new connection

        async def ping(within: float) -> None:
            self.pings += 1
            if not self.answering:  # a partition: no answer, no error, until the timeout
                await asyncio.sleep(within)
                raise DatabaseUnavailableError("database unavailable: no answer")

        try:
            yield ping
        finally:
            self._on_task = self._on_lost = None

    def partition(self) -> None:
        """The listening connection stops answering and delivering, closing nothing."""
        self.answering = False
        self._on_task = self._on_lost = None

    def store(self, task_id: uuid.UUID, *contents: str, notify: bool = True) -> list[uuid.UUID]:
        """Store entries in one statement; one notification for it, as the trigger sends."""
        now = datetime.now(UTC)
        ids = []
        for content in contents:
            self._seq += 1
            entry = HistoryEntry(
                id=uuid.uuid4(),
                task_id=task_id,
                workspace_id=None,
                session_id=None,
                context_type=ContextType.AGENT_TURN,
                content=content,
                metadata=None,
                created_at=now,
                expires_at=now + timedelta(days=20),
            )
            self.rows.setdefault(task_id, []).append((entry, Cursor(now, self._seq)))
            ids.append(entry.id)
        if notify and self._on_task is not None:
            self._on_task(task_id)
        return ids

    def lose(self) -> None:
        """The listening connection dies."""
        if self._on_lost is not None:
            self._on_lost()


@pytest.fixture
async def source() -> FakeSource:
    """An empty fake store."""
    return FakeSource()


@pytest.fixture
async def feeds(source: FakeSource) -> AsyncIterator[Feeds]:
    """Feeds on the fake store, listening."""
    feeds = Feeds(source, backlog_limit=5, retry_max_seconds=0.05, ping_every=0.1)
    running = asyncio.create_task(feeds.run())
    yield feeds
    feeds.close()
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def contents(watcher: Watcher, count: int) -> list[str]:
    """The contents of the watcher's next `count` entries."""
    got = []
    for _ in range(count):
        arrival = await watcher.next(within=5)
        assert arrival is not None
        got.append(arrival[0].content)
    return got


class TestFanOut:
    """Watchers of a task share one read per notification; each gets every new entry once."""

    async def test_100_watchers_of_one_task(self, feeds: Feeds, source: FakeSource) -> None:
        """100 watchers all get the two new entries in order, from one read after the first."""
        task = uuid.uuid4()
        source.store(task, "old")
        async with watching(feeds, [task] * 100) as watchers:
            reads = source.reads
            source.store(task, "one", "two")
            for watcher in watchers:
                assert await contents(watcher, 2) == ["one", "two"]
            assert source.reads == reads + 1
            assert feeds.watchers == 100
        assert feeds.watchers == 0
        assert source.listens == 1

    async def test_watchers_get_only_their_tasks_entries(
        self, feeds: Feeds, source: FakeSource
    ) -> None:
        """Entries of other tasks, watched or not, never reach a watcher."""
        mine, theirs, nobodys = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        async with feeds.watch(mine) as watcher, feeds.watch(theirs) as other:
            source.store(nobodys, "unwatched")
            source.store(theirs, "theirs")
            source.store(mine, "mine")
            assert await contents(watcher, 1) == ["mine"]
            assert await contents(other, 1) == ["theirs"]

    async def test_an_entry_stored_before_watching_is_not_new(
        self, feeds: Feeds, source: FakeSource
    ) -> None:
        """What was stored before the watch began is left to the caller's own backlog read."""
        task = uuid.uuid4()
        source.store(task, "before", notify=False)
        async with feeds.watch(task) as watcher:
            source.store(task, "after")
            assert await contents(watcher, 1) == ["after"]


class TestTrouble:
    """Slow clients, a lost listening connection, shutdown."""

    async def test_a_slow_watcher_is_ended_not_the_others(
        self, feeds: Feeds, source: FakeSource
    ) -> None:
        """With over 5 entries waiting when more come, a watcher ends; a reading one goes on."""
        task = uuid.uuid4()
        async with feeds.watch(task) as slow, feeds.watch(task) as quick:
            for n in range(7):
                source.store(task, f"entry {n}")
                assert await contents(quick, 1) == [f"entry {n}"]
            assert slow.ended
            assert slow.reason is not None
            assert "reconnect with Last-Event-ID" in slow.reason
            assert await slow.next(within=1) is None

    async def test_entries_stored_while_not_listening_arrive_after_listening_again(
        self, feeds: Feeds, source: FakeSource
    ) -> None:
        """After the listening connection is lost, the feeds read again once it is back."""
        task = uuid.uuid4()
        async with feeds.watch(task) as watcher:
            source.lose()
            source.store(task, "meanwhile", notify=False)
            assert await contents(watcher, 1) == ["meanwhile"]
            assert source.listens == 2

    async def test_a_silent_listening_connection_is_replaced(
        self, feeds: Feeds, source: FakeSource
    ) -> None:
        """A listening connection that stops answering pings is listened again; feeds read again."""
        task = uuid.uuid4()
        async with feeds.watch(task) as watcher:
            source.partition()
            source.store(task, "during the partition")  # its notification is lost
            assert await contents(watcher, 1) == ["during the partition"]
            assert source.listens == 2
            assert feeds.listening

    async def test_close_ends_every_stream_and_refuses_new_ones(
        self, feeds: Feeds, source: FakeSource
    ) -> None:
        """On shutdown every watcher's stream ends at once; a new watch is refused."""
        task = uuid.uuid4()
        async with feeds.watch(task) as watcher:
            source.store(task, "queued")
            await asyncio.sleep(0.05)
            feeds.close()
            assert await watcher.next(within=1) is None
        with pytest.raises(DatabaseUnavailableError):
            async with feeds.watch(task):
                pass

    async def test_without_notifications_a_watch_is_refused(self, source: FakeSource) -> None:
        """Feeds that are not listening refuse a watch after the wait: the database is away."""
        feeds = Feeds(source)
        with pytest.raises(DatabaseUnavailableError, match="notifications"):
            async with feeds.watch(uuid.uuid4(), wait=0.1):
                pass


class TestStreamRoute:
    """The stream route gives its watcher back however the response ends."""

    async def test_a_client_gone_before_the_body_starts_leaves_no_watcher(
        self, feeds: Feeds
    ) -> None:
        """Gone while the headers are still being sent (its socket full): the watch ends too."""
        app = create_app(load_settings())
        state = app.state.api
        state.feeds = feeds
        state.connected.set()
        task = uuid.uuid4()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # what uvicorn says
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/tasks/{task}/history/stream",
            "raw_path": f"/tasks/{task}/history/stream".encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
        }
        sent: list[str] = []

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message["type"])
            if message["type"] == "http.response.start":
                await asyncio.sleep(0.2)  # a client that reads nothing: the send waits

        await asyncio.wait_for(app(scope, receive, send), 5)
        assert sent == ["http.response.start"]  # the body never started
        assert feeds.watchers == 0


@asynccontextmanager
async def watching(feeds: Feeds, tasks: list[uuid.UUID]) -> AsyncIterator[list[Watcher]]:
    """One watcher per entry of `tasks`, all watching while the block runs."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(feeds.watch(task)) for task in tasks]
